#!/bin/bash
# Side-by-side LMTP benchmark: nestbox-lmtpd against Dovecot 2.3 LMTP and Cyrus 3.6 lmtpd, in the
# same run, on the same disk, with the same load generator (Postfix's smtp-source -L), all on
# 127.0.0.1. Prints messages/s per server and the ratios Nestbox/Dovecot and Nestbox/Cyrus
# (above 1: Nestbox is faster), then the peak RSS of nestbox-lmtpd receiving one 50 MB message.
#
#   bench/lmtp.sh [--install] [--big] [--rounds N] [--dup] [--keep]
#
#   --install   apt-get install the missing Debian packages (postfix for smtp-source,
#               dovecot-core dovecot-lmtpd, cyrus-common); without it the script
#               only names them and exits 69.
#   --big       also run row 4: 1000 messages into a mailbox that already holds 100k (slow:
#               several minutes more, mostly to build the three 100k mailboxes).
#   --rounds N  repeat each row N times (default 3) and report the median; every round goes to
#               fresh mailboxes and the servers take turns at going first. The default run
#               (rows 1-3, 3 rounds) takes about 2 minutes; --big adds 5-10.
#   --dup       run nestbox-lmtpd with duplicatesuppression on (default off, like Dovecot).
#   --keep      keep the work directory (/tmp/nestbox-lmtp.XXXXXX) with the mail and the logs.
#
# Needs root (the servers run as vmail / cyrus). Everything it needs is set up here, in a fresh
# temporary directory; nothing outside it is touched except the accounts vmail (created if
# missing) and cyrus (from the cyrus-common package).
#
# Method (shared/docs/BENCHMARKS.md): ratios measured side by side, same durability:
#   - nestbox-lmtpd (.build/release; built with `swift build -c release --product nestbox-lmtpd`
#     when missing) fsyncs every delivery (file and directory) before its 250 reply;
#     duplicatesuppression off (Dovecot has none; --dup turns it on).
#   - Dovecot LMTP, Maildir, mail_fsync = always, the quota plugin as in the anchor (maildirsize
#     kept up to date, as Nestbox does).
#   - Cyrus lmtpd with its default fsync behaviour and default duplicate suppression, started
#     by Cyrus's master as user cyrus, prefork=2 maxchild=8 as in the anchor.
#   Ports: Dovecot 24251, Cyrus 24252, Nestbox 24253. Each server gets a fresh mail root; each
#   row and round delivers to its own new user, so a row never sees the mail of an earlier one;
#   each such mailbox is created (autocreate) by one untimed delivery just before the timed run
#   (Cyrus answers 451 "Mailbox already exists" when 4 sessions autocreate one mailbox at
#   once). Before each timed run: `sync`, so that no server pays for the writeback of another. Each server gets 5 untimed warm-up messages after it starts.
#   Wall time is that of smtp-source (connect to last reply), messages/s = messages / time.
#   After every run the messages in the mailbox are counted (Maildir: new/ + cur/; Cyrus: the
#   `<uid>.` files in the directory `mbpath` names); a wrong count marks the cell "BAD".
#
# Rows:
#   1  1 session, 1000 x 4 KiB (smtp-source -l 4096), one mailbox
#   2  4 sessions, 2000 x 4 KiB, one mailbox
#   3  4 sessions, 2000 x 4 KiB, 4 mailboxes: smtp-source cannot give each session its own
#      recipient, so 4 smtp-source processes (-s 1 -m 500) run in parallel, one per recipient
#   4  (--big) 1 session, 1000 x 4 KiB into a mailbox that already holds 100k messages.
#      Filling it by LMTP would take 5-10 minutes per server, so the 100k (1 KiB each) are
#      written directly: for Dovecot and Nestbox as Maildir files in cur/, then indexed once by
#      `doveadm force-resync` + `doveadm quota recalc` (dovecot-uidlist with 100k UIDs,
#      maildirsize, Dovecot's index), and that mailbox is copied to both servers, so both start
#      from the same state a mailbox served by Dovecot IMAP has. For Cyrus, after one LMTP
#      delivery has created user/big, files `2.` .. `100001.` are written into its directory
#      and `reconstruct` adds them to its index. Then each server gets one untimed delivery
#      into it (so any first-look work is not timed) before the timed rounds; the rounds add to
#      the same mailbox. (Dovecot's LMTP process reads and parses the whole dovecot-uidlist,
#      ~4.7 MB here, at every delivery: its figure in this row is bound by CPU, not by fsync.)
# Memory: a fresh nestbox-lmtpd receives one message with a 50 MB body (smtp-source
#   -l 52428800 -m 1); its VmHWM (and that of any child process) is read from /proc while it
#   runs and after.

set -u

repo=$(cd "$(dirname "$0")/.." && pwd)
PORT_D=24251 PORT_C=24252 PORT_N=24253
SIZE=4096
BIG_COUNT=100000
install=no big=no rounds=3 keep=no dup=no

while [ $# -gt 0 ]; do
  case $1 in
    --install) install=yes ;;
    --big) big=yes ;;
    --rounds) shift; rounds=${1:-}; case $rounds in ''|*[!0-9]*|0) echo "--rounds needs a number >= 1" >&2; exit 64 ;; esac ;;
    --keep) keep=yes ;;
    --dup) dup=yes ;;
    -h|--help) sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 64 ;;
  esac
  shift
done

say() { printf '%s\n' "$*" >&2; }
die() { say "lmtp.sh: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "needs root (the servers run as vmail and cyrus)"

# ---------------------------------------------------------------- packages
SMTP_SOURCE=/usr/sbin/smtp-source
[ -x "$SMTP_SOURCE" ] || SMTP_SOURCE=$(command -v smtp-source 2>/dev/null || true)
CYRUS_BIN=/usr/lib/cyrus/bin

missing_packages() {
  local m=""
  [ -n "$SMTP_SOURCE" ] && [ -x "$SMTP_SOURCE" ] || m="$m postfix"
  command -v dovecot >/dev/null 2>&1 && command -v doveadm >/dev/null 2>&1 || m="$m dovecot-core"
  [ -x /usr/lib/dovecot/lmtp ] || m="$m dovecot-lmtpd"
  # cyrus-common has master and lmtpd; cyrus-imapd (the IMAP server) is not needed and
  # conflicts with dovecot-imapd.
  for b in master lmtpd ctl_cyrusdb mbpath reconstruct; do
    [ -x $CYRUS_BIN/$b ] || { m="$m cyrus-common"; break; }
  done
  echo $m
}

missing=$(missing_packages)
if [ -n "$missing" ]; then
  if [ $install = yes ]; then
    say "installing: $missing"
    # Postfix only provides smtp-source here: no configuration, no mail system set up.
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null || die "apt-get update failed"
    # shellcheck disable=SC2086
    apt-get install -y -q $missing || die "apt-get install $missing failed"
    SMTP_SOURCE=/usr/sbin/smtp-source
    [ -x "$SMTP_SOURCE" ] || SMTP_SOURCE=$(command -v smtp-source 2>/dev/null || true)
    missing=$(missing_packages)
    [ -z "$missing" ] || die "still missing after install: $missing"
  else
    say "missing Debian packages: $missing"
    say "install them with: apt-get install -y $missing   (or run: bench/lmtp.sh --install)"
    exit 69
  fi
fi
for t in setpriv timeout sync find awk sort; do
  command -v $t >/dev/null 2>&1 || die "$t not found"
done
id cyrus >/dev/null 2>&1 || die "no user cyrus (package cyrus-common)"
id vmail >/dev/null 2>&1 || useradd -r -d /nonexistent -s /usr/sbin/nologin vmail || die "cannot create user vmail"

# ---------------------------------------------------------------- work dir and cleanup
work=$(mktemp -d /tmp/nestbox-lmtp.XXXXXX) || die "mktemp failed"
chmod 755 "$work"
nb_pid="" bg_pids=""

kill_wait() { # pid [seconds]: TERM, wait (bounded), then KILL
  local pid=$1 n=$(( ${2:-10} * 10 ))
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  while [ $n -gt 0 ] && kill -0 "$pid" 2>/dev/null; do sleep 0.1; n=$((n-1)); done
  kill -KILL "$pid" 2>/dev/null
  return 0
}
children_of() { cat /proc/"$1"/task/*/children 2>/dev/null; }
kill_tree() { # pid: KILL it and everything below it
  local c
  for c in $(children_of "$1"); do kill_tree "$c"; done
  kill -KILL "$1" 2>/dev/null
}

stop_nestbox() { [ -n "$nb_pid" ] && { kill_wait "$nb_pid"; wait "$nb_pid" 2>/dev/null; nb_pid=""; }; return 0; }
stop_dovecot() {
  local f=$work/dovecot/run/master.pid pid kids
  [ -f "$f" ] || return 0
  pid=$(cat "$f"); kids=$(children_of "$pid")
  kill_wait "$pid"
  for k in $kids; do kill -KILL "$k" 2>/dev/null; done
  rm -f "$f"
}
stop_cyrus() {
  local f=$work/cyrus/run/master.pid pid kids
  [ -f "$f" ] || return 0
  pid=$(cat "$f"); kids=$(children_of "$pid")
  kill_wait "$pid"
  for k in $kids; do kill -KILL "$k" 2>/dev/null; done
  rm -f "$f"
}
cleanup() {
  local rc=$?
  trap - EXIT INT TERM HUP
  set +u
  # First the load generators and any other child of this script (not nestbox-lmtpd: it is
  # stopped with TERM below; Dovecot and Cyrus run detached and are stopped by their pid files).
  for p in $bg_pids $(children_of $$); do [ "$p" = "$nb_pid" ] || kill_tree "$p"; done
  stop_nestbox; stop_dovecot; stop_cyrus
  if [ $keep = yes ]; then say "work directory kept: $work"; else rm -rf "$work"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# ---------------------------------------------------------------- helpers
listening() { # port: is something listening on 127.0.0.1:port?
  if command -v ss >/dev/null 2>&1; then
    [ -n "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]
  else
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
  fi
}
wait_port() { # port pid-to-watch(optional): up to 20 s
  local n=200
  while [ $n -gt 0 ]; do
    listening "$1" && return 0
    [ -n "${2:-}" ] && ! kill -0 "$2" 2>/dev/null && return 1
    sleep 0.1; n=$((n-1))
  done
  return 1
}
for p in $PORT_D $PORT_C $PORT_N; do
  listening $p && die "port 127.0.0.1:$p is already in use"
done

now() { date +%s.%N; }
# send port sessions messages rcpt [bytes]: one smtp-source run, bounded to 15 minutes
# (run in the background and waited for, so that a signal to this script is acted on at once)
send() {
  timeout 900 "$SMTP_SOURCE" -L -d -s "$2" -m "$3" -l "${5:-$SIZE}" -M bench.example.org \
    -f s@example.org -t "$4" "127.0.0.1:$1" >>"$work/smtp-source.log" 2>&1 &
  wait $!
}

vmail_run() { setpriv --reuid vmail --regid "$(id -g vmail)" --init-groups "$@"; }
cyrus_run() { setpriv --reuid cyrus --regid "$(id -g cyrus)" --init-groups "$@"; }

# count server user: messages in that user's INBOX
count() {
  local d
  case $1 in
    nestbox) d=$work/nestbox/mail/$2 ;;
    dovecot) d=$work/dovecot/mail/$2 ;;
    cyrus)
      d=$(cyrus_run $CYRUS_BIN/mbpath -C "$work/cyrus/imapd.conf" "user/$2" 2>/dev/null | tail -n 1)
      [ -n "$d" ] && [ -d "$d" ] || { echo 0; return; }
      find "$d" -maxdepth 1 -type f -name '[0-9]*.' | wc -l
      return ;;
  esac
  find "$d/new" "$d/cur" -maxdepth 1 -type f 2>/dev/null | wc -l
}
port_of() { case $1 in nestbox) echo $PORT_N ;; dovecot) echo $PORT_D ;; cyrus) echo $PORT_C ;; esac; }

# ---------------------------------------------------------------- Nestbox
nb_bin=$repo/.build/release/nestbox-lmtpd
nb_why=""
if [ ! -x "$nb_bin" ]; then
  if [ ! -f "$repo/Sources/nestbox-lmtpd/main.swift" ]; then
    nb_why="Sources/nestbox-lmtpd/main.swift does not exist (nestbox-lmtpd not written yet)"
  else
    say "building nestbox-lmtpd (swift build -c release --product nestbox-lmtpd) ..."
    if ! (cd "$repo" && swift build -c release --product nestbox-lmtpd) >"$work/nestbox-build.log" 2>&1; then
      tail -n 20 "$work/nestbox-build.log" >&2
      nb_why="swift build -c release --product nestbox-lmtpd failed (output above)"
    elif [ ! -x "$nb_bin" ]; then
      nb_why="the build did not produce $nb_bin"
    fi
  fi
fi

# A binary older than the sources it is built from would measure old code: say so.
if [ -z "$nb_why" ] && [ -n "$(find "$repo/Sources" "$repo/Package.swift" -newer "$nb_bin" -type f 2>/dev/null | head -n 1)" ]; then
  say "WARNING: $nb_bin is older than Sources/ (rebuild: swift build -c release --product nestbox-lmtpd)"
  nb_stale=" (binary older than Sources/)"
else
  nb_stale=""
fi

start_nestbox() {
  mkdir -p "$work/nestbox/mail"
  chown vmail:"$(id -g vmail)" "$work/nestbox/mail"
  cat > "$work/nestbox/nestbox.conf" <<EOF
partition-default: $work/nestbox/mail
mail_owner: vmail
autocreate_post: yes
autocreate_quota: 0
duplicatesuppression: $dup
lmtpsocket:
lmtp_listen: 127.0.0.1:$PORT_N
EOF
  # Started as root: binds, then switches to vmail. -L: log to a file like Dovecot does.
  "$nb_bin" -C "$work/nestbox/nestbox.conf" -L 2>>"$work/nestbox/lmtpd.log" </dev/null &
  nb_pid=$!
  if ! wait_port $PORT_N $nb_pid; then
    tail -n 20 "$work/nestbox/lmtpd.log" >&2
    stop_nestbox
    return 1
  fi
}

# ---------------------------------------------------------------- Dovecot
start_dovecot() {
  local d=$work/dovecot
  mkdir -p "$d/run" "$d/state" "$d/mail"
  chown vmail:"$(id -g vmail)" "$d/mail"
  cat > "$d/dovecot.conf" <<EOF
# Copied from shared/anchors/dovecot-lmtp.conf: LMTP only, own paths and port.
base_dir = $d/run
state_dir = $d/state
log_path = $d/dovecot.log
protocols = lmtp
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
mail_location = maildir:$d/mail/%n
mail_uid = vmail
mail_gid = vmail
first_valid_uid = 100
default_internal_user = root
default_internal_group = root
default_login_user = root
passdb {
  driver = static
  args = password=pass
}
userdb {
  driver = static
  args = uid=vmail gid=vmail home=$d/mail/%n
}
service lmtp {
  inet_listener lmtp {
    address = 127.0.0.1
    port = $PORT_D
  }
  user = root
}
service anvil {
  chroot =
}
mail_fsync = always
mail_plugins = \$mail_plugins quota
plugin {
  quota = maildir:User quota
  quota_rule = *:storage=0
}
EOF
  dovecot -c "$d/dovecot.conf" || { tail -n 20 "$d/dovecot.log" >&2; return 1; }
  wait_port $PORT_D || { tail -n 20 "$d/dovecot.log" >&2; return 1; }
}

# ---------------------------------------------------------------- Cyrus
start_cyrus() {
  local c=$work/cyrus
  mkdir -p "$c/conf" "$c/spool" "$c/run/socket" "$c/run/proc" "$c/run/lock" "$c/sieve" "$c/tmp"
  cat > "$c/imapd.conf" <<EOF
configdirectory: $c/conf
partition-default: $c/spool
defaultpartition: default
proc_path: $c/run/proc
mboxname_lockpath: $c/run/lock
lmtpsocket: $c/run/socket/lmtp
idlesocket: $c/run/socket/idle
notifysocket: $c/run/socket/notify
sievedir: $c/sieve
temp_path: $c/tmp
unixhierarchysep: yes
virtdomains: off
autocreate_post: 1
autocreate_quota: 0
admins: cyrus
syslog_prefix: benchcyrus
duplicatesuppression: 1
EOF
  cat > "$c/cyrus.conf" <<EOF
START {
  recover cmd="ctl_cyrusdb -C $c/imapd.conf -r"
}
SERVICES {
  lmtp cmd="lmtpd -C $c/imapd.conf -a" listen="127.0.0.1:$PORT_C" prefork=2 maxchild=8
}
EVENTS {
}
EOF
  chown -R cyrus:mail "$c"
  cyrus_run $CYRUS_BIN/master -C "$c/imapd.conf" -M "$c/cyrus.conf" -p "$c/run/master.pid" -d \
    >"$c/master.out" 2>&1 </dev/null || { cat "$c/master.out" >&2; return 1; }
  wait_port $PORT_C || { cat "$c/master.out" >&2; return 1; }
}

# ---------------------------------------------------------------- start
servers=""
if [ -z "$nb_why" ]; then
  if start_nestbox; then servers="nestbox"; else nb_why="nestbox-lmtpd did not start (log above)"; fi
fi
[ -n "$nb_why" ] && say "NESTBOX: n/a: $nb_why"
start_dovecot || die "Dovecot did not start"
start_cyrus || die "Cyrus master/lmtpd did not start"
servers="$servers dovecot cyrus"
servers=${servers# }

bad=0
for s in $servers; do
  send "$(port_of $s)" 1 5 warm@example.test
  [ "$(count $s warm)" -eq 5 ] || { say "$s: warm-up delivery failed (see logs)"; bad=1; }
done
[ $bad -eq 0 ] || { [ $keep = yes ] || say "(run with --keep to look at the logs)"; exit 1; }

# ---------------------------------------------------------------- rows
# results[row,server] = space-separated msg/s of every round
declare -A results
set_server_order() { # round: rotate the servers so that each goes first in turn
  local arr=($servers) n i out=""
  n=${#arr[@]}
  for ((i = 0; i < n; i++)); do out="$out ${arr[(i + $1) % n]}"; done
  echo $out
}

# run_row row round server: one timed run; appends msg/s (or BAD) to results. Every target
# mailbox is first created by one untimed delivery (Cyrus answers "451 4.3.0 Mailbox already
# exists" when 4 sessions autocreate the same mailbox at once, and the row is not about
# autocreation), so every count below is one more than the timed messages.
run_row() {
  local row=$1 r=$2 s=$3 port t0 t1 msgs ok=1 u users want got p pids="" rate
  port=$(port_of $s)
  case $row in
    1) users=b1r$r; msgs=1000 ;;
    2) users=b2r$r; msgs=2000 ;;
    3) users="b3r${r}m1 b3r${r}m2 b3r${r}m3 b3r${r}m4"; msgs=2000 ;;
    4) users=big; msgs=1000 ;;
  esac
  if [ $row = 4 ]; then
    want=$(( $(count $s big) + 1000 ))
  else
    for u in $users; do send $port 1 1 $u@example.test; done
    want=$(( msgs / $(echo $users | wc -w) + 1 ))
  fi
  sync
  case $row in
    1|2|4) t0=$(now); send $port $([ $row = 2 ] && echo 4 || echo 1) $msgs $users@example.test; t1=$(now) ;;
    3) t0=$(now)
       for u in $users; do send $port 1 500 $u@example.test & pids="$pids $!"; done
       bg_pids=$pids
       for p in $pids; do wait $p; done
       t1=$(now); bg_pids="" ;;
  esac
  for u in $users; do
    got=$(count $s $u)
    [ "$got" -eq "$want" ] || { ok=0; say "  $s row $row: $got messages in $u, expected $want"; }
  done
  rate=$(awk -v m=$msgs -v a=$t0 -v b=$t1 'BEGIN { printf "%.1f", m / (b - a) }')
  say "  row $row round $r: $s $rate msg/s$([ $ok = 1 ] || echo ' (BAD COUNT)')"
  if [ $ok = 0 ]; then
    rate=BAD; bad=1
    tail -n 3 "$work/smtp-source.log" | sed 's/^/    smtp-source: /' >&2
  fi
  results[$row,$s]="${results[$row,$s]:-} $rate"
}

# ---------------------------------------------------------------- 100k mailboxes (--big)
make_big() {
  local t=$work/bigtmpl i body size lines vsize now_s c d t_start
  t_start=$(date +%s)
  say "building the 100k-message mailboxes (see the header comment for how) ..."
  body=$(i=0; while [ $i -lt 13 ]; do printf '%071d\n' $i; i=$((i+1)); done)
  # Maildir template for Dovecot and Nestbox: LF line ends, all the same size.
  mkdir -p "$t/big/cur" "$t/big/new" "$t/big/tmp"
  printf 'From: Filler <filler@example.org>\nTo: big@example.test\nSubject: filler %06d\nMessage-ID: <filler.%06d@example.org>\nDate: Thu, 26 Nov 2026 10:00:00 +0000\n\n%s\n' 0 0 "$body" >"$t/sample"
  size=$(wc -c <"$t/sample"); lines=$(wc -l <"$t/sample"); vsize=$((size + lines))
  now_s=$(( $(date +%s) - 86400 ))
  for ((i = 1; i <= BIG_COUNT; i++)); do
    printf 'From: Filler <filler@example.org>\nTo: big@example.test\nSubject: filler %06d\nMessage-ID: <filler.%06d@example.org>\nDate: Thu, 26 Nov 2026 10:00:00 +0000\n\n%s\n' $i $i "$body" \
      >"$t/big/cur/$now_s.M${i}P1.bench,S=$size,W=$vsize:2,S"
  done
  chown -R vmail:"$(id -g vmail)" "$t"
  say "  Maildir: doveadm force-resync, quota recalc, copies ($(( $(date +%s) - t_start )) s)"
  local dc=$work/dovecot/dovecot.conf
  # (-o values are not expanded: %n would be taken literally, so the path is spelled out.)
  timeout 600 doveadm -c "$dc" -o "mail_location=maildir:$t/big" force-resync -u big INBOX || die "doveadm force-resync failed"
  timeout 600 doveadm -c "$dc" -o "mail_location=maildir:$t/big" quota recalc -u big || die "doveadm quota recalc failed"
  c=$(tail -n +2 "$t/big/dovecot-uidlist" 2>/dev/null | grep -c '^[0-9]')
  [ "${c:-0}" -eq $BIG_COUNT ] || die "doveadm force-resync gave ${c:-no} UIDs, expected $BIG_COUNT"
  [ -s "$t/big/maildirsize" ] || die "doveadm quota recalc wrote no maildirsize"
  for s in $servers; do
    case $s in
      nestbox) cp -a "$t/big" "$work/nestbox/mail/big" ;;
      dovecot) cp -a "$t/big" "$work/dovecot/mail/big" ;;
    esac
  done
  rm -rf "$t"
  say "  Cyrus: writing $BIG_COUNT message files ($(( $(date +%s) - t_start )) s)"
  # Cyrus: create user/big by LMTP, write 2. .. 100001. (CRLF, as Cyrus stores mail), reconstruct.
  send $PORT_C 1 1 big@example.test
  d=$(cyrus_run $CYRUS_BIN/mbpath -C "$work/cyrus/imapd.conf" user/big 2>/dev/null | tail -n 1)
  [ -n "$d" ] && [ -d "$d" ] || die "Cyrus: no directory for user/big"
  body=${body//$'\n'/$'\r\n'}
  for ((i = 2; i <= BIG_COUNT + 1; i++)); do
    printf 'From: Filler <filler@example.org>\r\nTo: big@example.test\r\nSubject: filler %06d\r\nMessage-ID: <filler.%06d@example.org>\r\nDate: Thu, 26 Nov 2026 10:00:00 +0000\r\n\r\n%s\r\n' $i $i "$body" >"$d/$i."
  done
  chown -R cyrus:mail "$d"
  say "  Cyrus: reconstruct user/big ($(( $(date +%s) - t_start )) s)"
  timeout 900 setpriv --reuid cyrus --regid "$(id -g cyrus)" --init-groups $CYRUS_BIN/reconstruct -C "$work/cyrus/imapd.conf" user/big >"$work/cyrus/reconstruct.log" 2>&1 \
    || { tail -n 5 "$work/cyrus/reconstruct.log" >&2; die "Cyrus reconstruct failed"; }
  say "  one untimed delivery into each ($(( $(date +%s) - t_start )) s)"
  # One untimed delivery into each, then check that every server holds the 100k.
  for s in $servers; do
    case $s in cyrus) c=$((BIG_COUNT + 2)) ;; *) c=$((BIG_COUNT + 1)) ;; esac
    send "$(port_of $s)" 1 1 big@example.test
    [ "$(count $s big)" -eq $c ] || die "$s: the 100k mailbox holds $(count $s big) messages, expected $c"
  done
  say "  done ($(( $(date +%s) - t_start )) s)"
}

rows="1 2 3"
[ $big = yes ] && rows="$rows 4"
say "servers: $servers; rows: $rows; rounds: $rounds"
for row in $rows; do
  [ "$row" = 4 ] && make_big
  for ((r = 1; r <= rounds; r++)); do
    for s in $(set_server_order $r); do run_row $row $r $s; done
  done
done

# ---------------------------------------------------------------- memory: one 50 MB message
rss=""
if [ -z "$nb_why" ]; then
  say "peak RSS: fresh nestbox-lmtpd, one message with a 50 MB body ..."
  stop_nestbox
  mv "$work/nestbox/mail" "$work/nestbox/mail.rows"
  if start_nestbox; then
    hwm() { # max VmHWM in KiB of the server and its children
      local m=0 v p
      for p in $nb_pid $(children_of $nb_pid); do
        v=$(awk '/^VmHWM:/ { print $2 }' /proc/$p/status 2>/dev/null)
        [ -n "$v" ] && [ "$v" -gt $m ] && m=$v
      done
      echo $m
    }
    idle=$(hwm); peak=$idle
    send $PORT_N 1 1 huge@example.test 52428800 &
    sp=$!; bg_pids=$sp
    n=9000   # 15 minutes at 0.1 s
    while kill -0 $sp 2>/dev/null && [ $n -gt 0 ]; do
      v=$(hwm); [ "$v" -gt "$peak" ] && peak=$v
      sleep 0.1; n=$((n-1))
    done
    wait $sp; bg_pids=""
    v=$(hwm); [ "$v" -gt "$peak" ] && peak=$v
    f=$(find "$work/nestbox/mail/huge/new" "$work/nestbox/mail/huge/cur" -type f 2>/dev/null | head -n 1)
    fsize=$( [ -n "$f" ] && stat -c %s "$f" || echo 0)
    # smtp-source counts CRLF in -l; stored with LF ends the file is ~51.8 MB.
    if [ "$fsize" -ge 51000000 ]; then
      rss=$(awk -v p=$peak -v i=$idle 'BEGIN { printf "%.1f MiB (VmHWM; %.1f MiB before the message), message stored: %d bytes", p/1024, i/1024, '"$fsize"' }')
    else
      rss="FAILED: the 50 MB message was not stored (file size $fsize)"; bad=1
    fi
  else
    rss="FAILED: nestbox-lmtpd did not start again"; bad=1
  fi
fi

# ---------------------------------------------------------------- table
median() { # the values on stdin (one line, space-separated): median, BAD if any is, n/a if none
  local v; v=$(cat)
  case $v in
    *BAD*) echo BAD ;;
    *[0-9]*) echo $v | tr ' ' '\n' | sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else printf "%.1f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }' ;;
    *) echo n/a ;;
  esac
}
ratio() { case "$1$2" in *n/a*|*BAD*) echo "-" ;; *) awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }' ;; esac; }
label() {
  case $1 in
    1) echo "1: 1 session, 1000 x 4 KiB, 1 mailbox" ;;
    2) echo "2: 4 sessions, 2000 x 4 KiB, 1 mailbox" ;;
    3) echo "3: 4 sessions, 2000 x 4 KiB, 4 mailboxes" ;;
    4) echo "4: 1 session, 1000 x 4 KiB, mailbox of 100k" ;;
  esac
}
{
  echo
  echo "LMTP on 127.0.0.1, messages/s (median of $rounds rounds), fsync on every delivery; $(nproc) cores, $(uname -r)"
  echo "dovecot $(dovecot --version | awk '{ print $1 }'), cyrus $(dpkg-query -W -f '${Version}' cyrus-common 2>/dev/null), nestbox $(git -C "$repo" rev-parse --short HEAD 2>/dev/null)$( [ -n "$(git -C "$repo" status --porcelain -- Sources 2>/dev/null)" ] && echo '+changes')${nb_stale}, duplicatesuppression: nestbox $dup, cyrus yes"
  printf '%-44s %10s %10s %10s %8s %8s\n' row "Nestbox" "Dovecot" "Cyrus" "N/D" "N/C"
  for row in $rows; do
    n=$(echo "${results[$row,nestbox]:-}" | median); d=$(echo "${results[$row,dovecot]:-}" | median); c=$(echo "${results[$row,cyrus]:-}" | median)
    printf '%-44s %10s %10s %10s %8s %8s\n' "$(label $row)" "$n" "$d" "$c" "$(ratio "$n" "$d")" "$(ratio "$n" "$c")"
  done
  echo
  if [ -n "$nb_why" ]; then
    echo "Nestbox: n/a: $nb_why"
  else
    echo "nestbox-lmtpd peak RSS, one 50 MB message: $rss"
  fi
}
[ $bad -eq 0 ] || { say "lmtp.sh: some deliveries did not arrive (BAD above)"; exit 1; }
exit 0
