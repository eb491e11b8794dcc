#!/bin/bash
# Side-by-side LMTP benchmark: nestbox-lmtpd against Dovecot 2.3 LMTP and Cyrus 3.6 lmtpd, in the
# same run, on the same disk, with the same load generator (Postfix's smtp-source -L), all on
# 127.0.0.1. nestbox-lmtpd runs twice side by side, with duplicate suppression off and on (two
# servers, two sets of rows). Prints the disk's limit for a safe delivery (bench/limit.sh)
# measured before and after the rows, messages/s per server, and for each Nestbox row the
# ratios Nestbox/Dovecot and Nestbox/Cyrus (above 1: Nestbox is faster) and Nestbox/limit;
# then the peak RSS of nestbox-lmtpd receiving one 50 MB message.
#
#   bench/lmtp.sh [--install] [--big] [--rounds N] [--dup | --no-dup] [--history N] [--keep]
#
#   --install   apt-get install the missing Debian packages (postfix for smtp-source,
#               dovecot-core dovecot-lmtpd, cyrus-common); without it the script
#               only names them and exits 69.
#   --big       also run row 4: 1000 messages into a mailbox that already holds 100k (slow:
#               several minutes more, mostly to build the 100k mailboxes).
#   --rounds N  repeat each row N times (default 3) and report the median; every round goes to
#               fresh mailboxes and the servers take turns at going first. The time follows the
#               disk: rows 1-3 with --rounds 1 took 8 minutes on a busy machine whose 1-writer
#               limit was 80-120 msg/s; each round adds the rows again; --big adds 5-10 minutes.
#   --dup       run only nestbox-lmtpd with duplicatesuppression on (the default setting).
#   --no-dup    run only nestbox-lmtpd with duplicatesuppression off (as Dovecot, which has none).
#               Without either, both run.
#   --history N start nestbox-lmtpd with duplicate suppression on as a server that has
#               delivered N messages within the expiry (default 3 days): N records spread over
#               the 256 logs of its duplicate database, plus N/100 expired ones (the server
#               prunes them at start; the rows begin once it has). A server with 100k
#               deliveries a day has about 300000 and 2 records a delivery on the last day.
#               Default 0 (an empty database). The other servers get no history (Dovecot has
#               no duplicate database; Cyrus's deliver.db starts empty).
#   --keep      keep the work directory (/tmp/nestbox-lmtp.XXXXXX) with the mail and the logs.
#
# Needs root (the servers run as vmail / cyrus). Everything it needs is set up here, in a fresh
# temporary directory; nothing outside it is touched except the accounts vmail (created if
# missing) and cyrus (from the cyrus-common package).
#
# Method (shared/docs/BENCHMARKS.md): ratios measured side by side, same durability:
#   - nestbox-lmtpd (.build/release; built with `swift build -c release --product nestbox-lmtpd`
#     when missing) fsyncs every delivery (file and directory) before its 250 reply; two
#     instances, each with its own mail root: duplicatesuppression off (as Dovecot, which has
#     none) and on (Nestbox's default; smtp-source gives every message its own Message-ID, so
#     every delivery is stored and recorded).
#   - Dovecot LMTP, Maildir, mail_fsync = always, the quota plugin as in the anchor (maildirsize
#     kept up to date, as Nestbox does).
#   - Cyrus lmtpd with its default fsync behaviour and default duplicate suppression, started
#     by Cyrus's master as user cyrus, prefork=2 maxchild=8 as in the anchor.
#   Ports: Dovecot 24251, Cyrus 24252, Nestbox 24253 (duplicate suppression off) and 24254
#   (on). Each server gets a fresh mail root; each
#   row and round delivers to its own new user, so a row never sees the mail of an earlier one;
#   each such mailbox is created (autocreate) by one untimed delivery just before the timed run
#   (Cyrus answers 451 "Mailbox already exists" when 4 sessions autocreate one mailbox at
#   once). Before each timed run: `sync`, so that no server pays for the writeback of another. Each server gets 5 untimed warm-up messages after it starts.
#   Wall time is that of smtp-source (connect to last reply), messages/s = messages / time.
#   The disk's limit (bench/limit.sh, same work directory, so the same file system) is measured
#   after the warm-up, before the first row, and again after the last row (before the memory
#   test); each Nestbox row is divided by the mean of the two figures of the matching load:
#   rows 1 and 4 by the 1-writer limit, row 2 by 4 writers into one directory, row 3 by 4 writers
#   into 4 directories.
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
# Memory: a fresh nestbox-lmtpd (each configuration in turn) receives one message with a 50 MB
#   body (smtp-source -l 52428800 -m 1); its VmHWM (and that of any child process) is read from
#   /proc while it runs and after.

set -u

repo=$(cd "$(dirname "$0")/.." && pwd)
PORT_D=24251 PORT_C=24252 PORT_N=24253 PORT_ND=24254
SIZE=4096
BIG_COUNT=100000
install=no big=no rounds=3 keep=no dups="no yes" history=0

while [ $# -gt 0 ]; do
  case $1 in
    --install) install=yes ;;
    --big) big=yes ;;
    --rounds) shift; rounds=${1:-}; case $rounds in ''|*[!0-9]*|0) echo "--rounds needs a number >= 1" >&2; exit 64 ;; esac ;;
    --keep) keep=yes ;;
    --history) shift; history=${1:-}; case $history in ''|*[!0-9]*) echo "--history needs a number >= 0" >&2; exit 64 ;; esac ;;
    --dup) dups=yes ;;
    --no-dup) dups=no ;;
    -h|--help) sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 64 ;;
  esac
  shift
done

say() { printf '%s\n' "$*" >&2; }
die() { say "lmtp.sh: $*"; exit 1; }

# The disk's limit: limit_build, limit_measure, limit_describe (see bench/limit.sh).
. "$repo/bench/limit.sh"
# Process helpers and the server configurations shared with bench/syscalls.sh.
. "$repo/bench/common.sh"

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
declare -A nb_pids   # nestbox server id -> pid
bg_pids=""


stop_nestbox() { # id
  local pid=${nb_pids[$1]:-}
  [ -n "$pid" ] && { kill_wait "$pid"; wait "$pid" 2>/dev/null; unset "nb_pids[$1]"; }
  return 0
}
stop_dovecot() { stop_master "$work/dovecot/run/master.pid"; }
stop_cyrus() { stop_master "$work/cyrus/run/master.pid"; }
cleanup() {
  local rc=$?
  trap - EXIT INT TERM HUP
  set +u
  # First the load generators and any other child of this script (not nestbox-lmtpd: it is
  # stopped with TERM below; Dovecot and Cyrus run detached and are stopped by their pid files).
  for p in $bg_pids $(children_of $$); do
    case " ${nb_pids[*]} " in *" $p "*) ;; *) kill_tree "$p" ;; esac
  done
  for s in "${!nb_pids[@]}"; do stop_nestbox "$s"; done
  stop_dovecot; stop_cyrus
  if [ $keep = yes ]; then say "work directory kept: $work"; else rm -rf "$work"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# ---------------------------------------------------------------- helpers
for p in $PORT_D $PORT_C $PORT_N $PORT_ND; do
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
    nestbox-*) d=$work/$1/mail/$2 ;;
    dovecot) d=$work/dovecot/mail/$2 ;;
    cyrus)
      d=$(cyrus_run $CYRUS_BIN/mbpath -C "$work/cyrus/imapd.conf" "user/$2" 2>/dev/null | tail -n 1)
      [ -n "$d" ] && [ -d "$d" ] || { echo 0; return; }
      find "$d" -maxdepth 1 -type f -name '[0-9]*.' | wc -l
      return ;;
  esac
  find "$d/new" "$d/cur" -maxdepth 1 -type f 2>/dev/null | wc -l
}
port_of() { case $1 in nestbox-nodup) echo $PORT_N ;; nestbox-dup) echo $PORT_ND ;; dovecot) echo $PORT_D ;; cyrus) echo $PORT_C ;; esac; }
dup_of() { case $1 in nestbox-dup) echo yes ;; *) echo no ;; esac; }
nb_ids=""
for v in $dups; do case $v in yes) nb_ids="$nb_ids nestbox-dup" ;; no) nb_ids="$nb_ids nestbox-nodup" ;; esac; done
nb_ids=${nb_ids# }

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

# fill_history DIR N: N final records with times spread over the last 3 days (the default
# duplicate_expire), less an hour at each end, and N/100 expired ones, in the 256 logs of the
# duplicate database DIR (the format of Sources/NestboxStore/DuplicateDB.swift). Their keys are
# never delivered, and each lands in a log chosen at random rather than by its hash: a
# lookup's cost is the size of the log it reads.
fill_history() {
  mkdir -p "$1"
  awk -v dir="$1" -v n="$2" -v now="$(date +%s)" -v window=259200 'BEGIN {
    srand(1)
    for (i = 0; i < n + int(n / 100); i++) {
      if (i < n) sec = now - 3600 - int(rand() * (window - 7200))
      else sec = now - window - 3600 - int(rand() * 86400)
      key = sprintf("<%d.%08x@mail%d.example.org>%%00Mon,%%2030%%20Nov%%202026%%2012:%02d:%02d%%20+0000%%00user%d", \
                    i, int(rand() * 4294967295), i % 50, i % 60, (i * 7) % 60, i % 1000)
      rest = sprintf(" %d %s -", sec, key)
      len = 2 + length(rest) + 1
      while (2 + length(len "") + length(rest) != len) len = 2 + length(len "") + length(rest)
      printf "\nF %d%s", len, rest >> sprintf("%s/%02x.log", dir, int(rand() * 256))
    }
  }' || return 1
}

start_nestbox() { # id (nestbox-nodup or nestbox-dup)
  local d=$work/$1 port n
  port=$(port_of "$1")
  mkdir -p "$d/mail"
  if [ "$1" = nestbox-dup ] && [ "$history" -gt 0 ] && [ ! -d "$d/mail/.nestbox/duplicates" ]; then
    say "duplicate database of $1: $history records and $((history / 100)) expired ones ..."
    fill_history "$d/mail/.nestbox/duplicates" "$history" || { say "could not write the history"; return 1; }
  fi
  chown -R vmail:"$(id -g vmail)" "$d/mail"
  nestbox_write_conf "$d" "$port" "$(dup_of "$1")"
  # Started as root: binds, then switches to vmail. -L: log to a file like Dovecot does.
  "$nb_bin" -C "$d/nestbox.conf" -L 2>>"$d/lmtpd.log" </dev/null &
  nb_pids[$1]=$!
  if ! wait_port "$port" "${nb_pids[$1]}"; then
    tail -n 20 "$d/lmtpd.log" >&2
    stop_nestbox "$1"
    return 1
  fi
  # With a history, the prune at start (which rewrites the logs) must not overlap the rows.
  if [ "$1" = nestbox-dup ] && [ "$history" -ge 100 ] && ! grep -q "duplicate database: pruned" "$d/lmtpd.log"; then
    n=600
    while [ $n -gt 0 ] && ! grep -q "duplicate database: pruned" "$d/lmtpd.log"; do sleep 0.5; n=$((n - 1)); done
    [ $n -gt 0 ] || { say "$1: no prune at start within 300 s (log: $d/lmtpd.log)"; return 1; }
  fi
}

# ---------------------------------------------------------------- Dovecot
start_dovecot() {
  local d=$work/dovecot
  mkdir -p "$d/run" "$d/state" "$d/mail"
  chown vmail:"$(id -g vmail)" "$d/mail"
  dovecot_write_conf "$d" $PORT_D
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
  for id in $nb_ids; do
    if start_nestbox $id; then servers="$servers $id"; else nb_why="nestbox-lmtpd ($id) did not start (log above)"; break; fi
  done
  [ -z "$nb_why" ] || { for id in $nb_ids; do stop_nestbox $id; done; servers=""; }
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
      nestbox-*) cp -a "$t/big" "$work/$s/mail/big" ;;
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

# ---------------------------------------------------------------- the disk's limit, before
limit_build "$work" || die "cannot build the limit program (bench/limit.c)"
say "disk limit (bench/limit.sh), before the rows ..."
limit_measure "$work" || die "the limit measurement failed"
limit_before=$(limit_describe)
l1_before=$LIMIT_1 l41_before=$LIMIT_4_1DIR l44_before=$LIMIT_4_4DIR
say "  $limit_before"

rows="1 2 3"
[ $big = yes ] && rows="$rows 4"
say "servers: $servers; rows: $rows; rounds: $rounds"
for row in $rows; do
  [ "$row" = 4 ] && make_big
  for ((r = 1; r <= rounds; r++)); do
    for s in $(set_server_order $r); do run_row $row $r $s; done
  done
done

# ---------------------------------------------------------------- the disk's limit, after
say "disk limit (bench/limit.sh), after the rows ..."
limit_measure "$work" || die "the limit measurement failed"
limit_after=$(limit_describe)
say "  $limit_after"
mean2() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", (a + b) / 2 }'; }
limit_1=$(mean2 "$l1_before" "$LIMIT_1")
limit_41=$(mean2 "$l41_before" "$LIMIT_4_1DIR")
limit_44=$(mean2 "$l44_before" "$LIMIT_4_4DIR")
limit_of_row() { case $1 in 1|4) echo "$limit_1" ;; 2) echo "$limit_41" ;; 3) echo "$limit_44" ;; esac; }

# ---------------------------------------------------------------- memory: one 50 MB message
declare -A rss
if [ -z "$nb_why" ]; then
  hwm() { # pid: max VmHWM in KiB of the server and its children
    local m=0 v p
    for p in $1 $(children_of $1); do
      v=$(awk '/^VmHWM:/ { print $2 }' /proc/$p/status 2>/dev/null)
      [ -n "$v" ] && [ "$v" -gt $m ] && m=$v
    done
    echo $m
  }
  for id in $nb_ids; do
    say "peak RSS: fresh nestbox-lmtpd ($id), one message with a 50 MB body ..."
    stop_nestbox $id
    mv "$work/$id/mail" "$work/$id/mail.rows"
    if start_nestbox $id; then
      pid=${nb_pids[$id]}
      idle=$(hwm $pid); peak=$idle
      send "$(port_of $id)" 1 1 huge@example.test 52428800 &
      sp=$!; bg_pids=$sp
      n=9000   # 15 minutes at 0.1 s
      while kill -0 $sp 2>/dev/null && [ $n -gt 0 ]; do
        v=$(hwm $pid); [ "$v" -gt "$peak" ] && peak=$v
        sleep 0.1; n=$((n-1))
      done
      wait $sp; bg_pids=""
      v=$(hwm $pid); [ "$v" -gt "$peak" ] && peak=$v
      f=$(find "$work/$id/mail/huge/new" "$work/$id/mail/huge/cur" -type f 2>/dev/null | head -n 1)
      fsize=$( [ -n "$f" ] && stat -c %s "$f" || echo 0)
      # smtp-source counts CRLF in -l; stored with LF ends the file is ~51.8 MB.
      if [ "$fsize" -ge 51000000 ]; then
        rss[$id]=$(awk -v p=$peak -v i=$idle -v f=$fsize 'BEGIN { printf "%.1f MiB (VmHWM; %.1f MiB before the message), message stored: %d bytes", p/1024, i/1024, f }')
      else
        rss[$id]="FAILED: the 50 MB message was not stored (file size $fsize)"; bad=1
      fi
      stop_nestbox $id
    else
      rss[$id]="FAILED: nestbox-lmtpd did not start again"; bad=1
    fi
  done
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
ratio() { case "$1$2" in *n/a*|*BAD*|*-*) echo "-" ;; *) awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }' ;; esac; }
label() {
  case $1 in
    1) echo "1: 1 session, 1000 x 4 KiB, 1 mailbox" ;;
    2) echo "2: 4 sessions, 2000 x 4 KiB, 1 mailbox" ;;
    3) echo "3: 4 sessions, 2000 x 4 KiB, 4 mailboxes" ;;
    4) echo "4: 1 session, 1000 x 4 KiB, mailbox of 100k" ;;
  esac
}
dup_label() { case $1 in nestbox-dup) echo on ;; nestbox-nodup) echo off ;; esac; }
{
  echo
  echo "LMTP on 127.0.0.1, messages/s (median of $rounds rounds), fsync on every delivery; $(nproc) cores, $(uname -r)"
  echo "dovecot $(dovecot --version | awk '{ print $1 }'), cyrus $(dpkg-query -W -f '${Version}' cyrus-common 2>/dev/null), nestbox $(git -C "$repo" rev-parse --short HEAD 2>/dev/null)$( [ -n "$(git -C "$repo" status --porcelain -- Sources 2>/dev/null)" ] && echo '+changes')${nb_stale}; duplicate suppression: cyrus on, dovecot has none$( [ "$history" -gt 0 ] && echo "; nestbox (on) started with $history records of history")"
  echo "disk limit (create in tmp/, write 4 KiB, fsync, rename into new/, fsync new/; $(df -PT "$work" | awk 'NR == 2 { print $2 " on " $1 }'))"
  echo "  before the rows: $limit_before"
  echo "  after the rows:  $limit_after"
  echo "  used (mean):     1 writer $limit_1, 4 writers 1 dir $limit_41, 4 writers 4 dirs $limit_44 msg/s"
  printf '%-44s %-4s %9s %9s %9s %9s %6s %6s %7s\n' row dup Nestbox Dovecot Cyrus limit N/D N/C N/limit
  for row in $rows; do
    d=$(echo "${results[$row,dovecot]:-}" | median); c=$(echo "${results[$row,cyrus]:-}" | median)
    lim=$(limit_of_row $row)
    if [ -n "$nb_why" ]; then
      printf '%-44s %-4s %9s %9s %9s %9s %6s %6s %7s\n' "$(label $row)" - n/a "$d" "$c" "$lim" - - -
      continue
    fi
    for id in $nb_ids; do
      n=$(echo "${results[$row,$id]:-}" | median)
      printf '%-44s %-4s %9s %9s %9s %9s %6s %6s %7s\n' "$(label $row)" "$(dup_label $id)" "$n" "$d" "$c" "$lim" \
        "$(ratio "$n" "$d")" "$(ratio "$n" "$c")" "$(ratio "$n" "$lim")"
    done
  done
  echo
  if [ -n "$nb_why" ]; then
    echo "Nestbox: n/a: $nb_why"
  else
    for id in $nb_ids; do
      echo "nestbox-lmtpd peak RSS, one 50 MB message, duplicate suppression $(dup_label $id): ${rss[$id]}"
    done
  fi
}
[ $bad -eq 0 ] || { say "lmtp.sh: some deliveries did not arrive (BAD above)"; exit 1; }
exit 0
