#!/bin/sh
# Builds nestbox-deliver and delivers a few messages into ./demo-mail with the built-in
# defaults (no configuration file; -o overrides only the mail root and the autocreate policy),
# then shows what is on disk: Maildir files, dovecot-uidlist, maildirsize, exit statuses.
set -eu
cd "$(dirname "$0")/.."
. scripts/common.sh
find_swift
# The store links libsasl2 and Berkeley DB (autocreate_users: sasldb).
apt_install libsasl2-dev libdb5.3-dev
swift build --product nestbox-deliver >/dev/null
bin=.build/debug/nestbox-deliver
root="$PWD/demo-mail"
rm -rf "$root"
mkdir -p "$root"
if [ "$(id -u)" = 0 ]; then
  # Started as root, nestbox-deliver switches to the mail owner (vmail) before touching mail.
  ensure_vmail
  chown vmail:vmail "$root"
fi
deliver() {
  set +e
  "$bin" -L -o "partition-default=$root" -o autocreate_post=yes -o autocreate_quota=10240 \
    -o "autocreate_inbox_folders=Sent|Trash|Work" "$@"
  status=$?
  set -e
  echo "    -> exit status $status"
}
message() {
  printf 'From: Demo <demo@example.org>\r\nTo: %s\r\nSubject: %s\r\nMessage-ID: <%s@example.org>\r\n\r\n%s\r\n' "$1" "$2" "$3" "$4"
}
echo "== alice: first delivery creates her INBOX (10 MiB quota) and Sent, Trash, Work"
message alice@example.test "Welcome" demo1 "Hello Alice." | deliver -r demo@example.org alice
echo "== alice+Work as alice herself (the owner may post to her folders)"
message alice+Work@example.test "Project" demo2 "Filed into Work." | deliver -r demo@example.org -a alice alice+Work
echo "== to two users at once"
message team@example.test "Team news" demo3 "For both of you." | deliver -r demo@example.org alice bob
echo "== a user name that tries to leave the mail root"
message x "Evil" demo4 "no" | deliver -r demo@example.org ../../etc
echo
echo "== what is on disk"
find "$root" -path "$root/.nestbox" -prune -o -type f -print | sed "s|$root/||" | sort
echo
echo "== $root/alice/dovecot-uidlist"
cat "$root/alice/dovecot-uidlist"
echo "== $root/alice/maildirsize"
cat "$root/alice/maildirsize"
echo "== the first message of alice"
cat "$root"/alice/new/* | head -8
