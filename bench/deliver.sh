#!/bin/sh
# Side-by-side: wall time per message of nestbox-deliver against dovecot-lda, one process per
# message as Postfix's pipe(8) runs them, the same 4 KiB message, the same disk, fsync on every
# delivery for both (dovecot: mail_fsync = always). Prints ms/message and the ratio.
#
#   bench/deliver.sh [messages]          (default 300; needs root, dovecot-core, a release build)
set -eu
n=${1:-300}
here=$(cd "$(dirname "$0")/.." && pwd)
bin="$here/.build/release/nestbox-deliver"
[ -x "$bin" ] || (cd "$here" && swift build -c release --product nestbox-deliver >/dev/null)
lda=/usr/lib/dovecot/dovecot-lda
[ -x "$lda" ] || { echo "dovecot-lda not found: apt-get install -y dovecot-core" >&2; exit 69; }
id vmail >/dev/null 2>&1 || useradd -r -d /nonexistent -s /usr/sbin/nologin vmail

work=$(mktemp -d /tmp/nestbox-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/nestbox" "$work/dovecot/mail" "$work/dovecot/run" "$work/dovecot/state"
chown -R vmail:vmail "$work"
chmod 755 "$work"

# A 4 KiB message.
{
  printf 'From: Bench <bench@example.org>\nTo: alice@example.test\nSubject: benchmark\n'
  printf 'Message-ID: <bench@example.org>\nDate: Thu, 26 Nov 2026 10:00:00 +0000\n\n'
  i=0
  while [ $i -lt 63 ]; do printf '%063d\n' $i; i=$((i+1)); done
} > "$work/msg"
size=$(wc -c < "$work/msg")

cat > "$work/dovecot/dovecot.conf" <<EOF
mail_location = maildir:$work/dovecot/mail/%n
base_dir = $work/dovecot/run
state_dir = $work/dovecot/state
log_path = $work/dovecot/dovecot.log
ssl = no
protocols =
mail_uid = vmail
mail_gid = vmail
first_valid_uid = 1
mail_fsync = always
mail_plugins = \$mail_plugins quota
plugin {
  quota = maildir:User quota
  quota_rule = *:storage=0
}
EOF

conf="$work/nestbox.conf"
# The same message every time: duplicate suppression would store it once (Dovecot has none).
printf 'partition-default: %s/nestbox/mail\nautocreate_post: yes\nautocreate_quota: 0\nduplicatesuppression: no\n' "$work" > "$conf"

run_nestbox() {
  i=0
  while [ $i -lt "$1" ]; do
    setpriv --reuid vmail --regid vmail --clear-groups "$bin" -C "$conf" -r bench@example.org alice < "$work/msg"
    i=$((i+1))
  done
}
run_dovecot() {
  i=0
  while [ $i -lt "$1" ]; do
    USER=alice HOME="$work/dovecot/mail/alice" setpriv --reuid vmail --regid vmail --clear-groups \
      "$lda" -c "$work/dovecot/dovecot.conf" -f bench@example.org < "$work/msg"
    i=$((i+1))
  done
}
now() { date +%s.%N; }

# Both run as vmail through the same setpriv, as pipe(8) with user=vmail would start them.
# Warm up both (first delivery creates the mailbox), then alternate rounds so that both see
# the same disk and the same load.
run_nestbox 5; run_dovecot 5
t_n=0; t_d=0; rounds=3; per=$((n / rounds))
r=0
while [ $r -lt $rounds ]; do
  a=$(now); run_nestbox $per; b=$(now); t_n=$(echo "$t_n + $b - $a" | bc)
  a=$(now); run_dovecot $per; b=$(now); t_d=$(echo "$t_d + $b - $a" | bc)
  r=$((r+1))
done
total=$((per * rounds))
got_n=$(ls "$work/nestbox/mail/alice/new" | wc -l)
got_d=$(ls "$work/dovecot/mail/alice/new" "$work/dovecot/mail/alice/cur" 2>/dev/null | grep -c ',S=' || true)
if [ "$got_n" -ne $((total + 5)) ] || [ "$got_d" -ne $((total + 5)) ]; then
  echo "stored $got_n (nestbox) and $got_d (dovecot) of $((total + 5)): no ratio" >&2
  exit 1
fi
ms_n=$(echo "scale=2; 1000 * $t_n / $total" | bc)
ms_d=$(echo "scale=2; 1000 * $t_d / $total" | bc)
ratio=$(echo "scale=2; $t_d / $t_n" | bc)
printf 'message: %d bytes, %d deliveries each (+5 warm-up), fsync on\n' "$size" "$total"
printf '%-16s %10s %10s\n' program ms/msg stored
printf '%-16s %10s %10s\n' nestbox-deliver "$ms_n" "$got_n"
printf '%-16s %10s %10s\n' dovecot-lda "$ms_d" "$got_d"
printf 'ratio dovecot-lda / nestbox-deliver: %sx (above 1: nestbox is faster)\n' "$ratio"
