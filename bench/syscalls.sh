#!/bin/bash
# System calls and context switches per delivered message: Nestbox against Dovecot, counted
# (not timed), so the figures do not move with the machine's load.
#
#   bench/syscalls.sh [--lmtp N] [--pipe N] [--perf] [--keep]
#
#   --lmtp N   messages per LMTP count (default 1000)
#   --pipe N   deliveries per pipe count (default 100)
#   --perf     also `perf record -g` nestbox-lmtpd (duplicate suppression on) during its
#              untraced LMTP run and print the top of `perf report --no-children` (by library,
#              by function) and of `perf report --children`
#   --keep     keep the work directory (/tmp/nestbox-syscalls.XXXXXX): logs, strace summaries
#
# Needs root, strace, perf (linux-perf), smtp-source (postfix), dovecot-core, dovecot-lmtpd and
# a release build (.build/release/nestbox-lmtpd and nestbox-deliver; built when missing).
#
# Programs, each with 4 KiB messages (smtp-source -l 4096; the pipe message is 4 KiB too):
#   nestbox-lmtpd, duplicatesuppression on (the default) and off
#   Dovecot LMTP (Maildir, mail_fsync = always, quota plugin: the configuration of bench/lmtp.sh,
#     bench/common.sh)
#   nestbox-deliver, duplicatesuppression on and off
#   dovecot-lda, same configuration
# LMTP: the server is started and given 5 untimed messages for the user (the mailbox exists
#   before counting, as it would after its first delivery); then one smtp-source -L session
#   delivers N messages while `strace -f -c` is attached to every process of the server (for
#   Dovecot: the master and all its children, with -f so that any lmtp process the master
#   forks during the run is followed). The strace window holds only that session.
# Pipe: each delivery is one process, started as Postfix's pipe(8) starts it: as user vmail, the
#   message on stdin through a pipe, `nestbox-deliver -C CONF -r SENDER USER` and
#   `dovecot-lda -c CONF -f SENDER` (USER and HOME set, as bench/deliver.sh); each under its own
#   `strace -f -c -u vmail` (what dovecot-lda execs to read its configuration is counted too).
#   Every pipe message has its own Message-ID, so with duplicate suppression on each is stored.
# Context switches are counted in a second run of the same load without strace (ptrace itself
#   switches at every call): `perf stat -e context-switches,task-clock` attached to the same
#   processes (LMTP), or around each delivery process (pipe: perf stat runs setpriv, which
#   execs the program as vmail). task-clock gives the CPU time.
# After every run the messages in the mailbox are counted; a wrong count is an error.
#
# Columns (calls per delivered message): fsync = fsync + fdatasync; open = open + openat +
# openat2 + creat; rename = rename + renameat + renameat2; unlink = unlink + unlinkat;
# write = write + pwrite64 + writev + pwritev + pwritev2; stat = stat + fstat + lstat +
# newfstatat + statx; all = every system call; cs = context switches (voluntary and
# involuntary); cpu = CPU ms per message (task-clock). Then every system call made at least 0.1
# times per message by any program.

set -u
repo=$(cd "$(dirname "$0")/.." && pwd)
PORT_D=24261 PORT_N=24263
SIZE=4096
lmtp_n=1000 pipe_n=100 keep=no perf=no
while [ $# -gt 0 ]; do
  case $1 in
    --lmtp) shift; lmtp_n=${1:-}; case $lmtp_n in ''|*[!0-9]*|0) echo "--lmtp needs a number >= 1" >&2; exit 64 ;; esac ;;
    --pipe) shift; pipe_n=${1:-}; case $pipe_n in ''|*[!0-9]*|0) echo "--pipe needs a number >= 1" >&2; exit 64 ;; esac ;;
    --perf) perf=yes ;;
    --keep) keep=yes ;;
    -h|--help) sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 64 ;;
  esac
  shift
done

say() { printf '%s\n' "$*" >&2; }
die() { say "syscalls.sh: $*"; exit 1; }
. "$repo/bench/common.sh"

[ "$(id -u)" -eq 0 ] || die "needs root (the servers run as vmail)"
SMTP_SOURCE=/usr/sbin/smtp-source
LDA=/usr/lib/dovecot/dovecot-lda
for t in strace perf dovecot setpriv timeout; do
  command -v $t >/dev/null 2>&1 || die "$t not found (apt-get install -y strace linux-perf dovecot-core)"
done
[ -x "$SMTP_SOURCE" ] || die "smtp-source not found (apt-get install -y postfix)"
[ -x /usr/lib/dovecot/lmtp ] || die "Dovecot LMTP not found (apt-get install -y dovecot-lmtpd)"
[ -x "$LDA" ] || die "dovecot-lda not found (apt-get install -y dovecot-core)"
id vmail >/dev/null 2>&1 || useradd -r -d /nonexistent -s /usr/sbin/nologin vmail || die "cannot create user vmail"
for p in nestbox-lmtpd nestbox-deliver; do
  [ -x "$repo/.build/release/$p" ] && continue
  say "building $p (swift build -c release --product $p) ..."
  (cd "$repo" && swift build -c release --product $p) >&2 || die "swift build -c release --product $p failed"
done
NB_LMTPD=$repo/.build/release/nestbox-lmtpd NB_DELIVER=$repo/.build/release/nestbox-deliver
stale=""
[ -n "$(find "$repo/Sources" "$repo/Package.swift" -newer "$NB_LMTPD" -type f 2>/dev/null | head -n 1)" ] \
  && { stale=" (binary older than Sources/)"; say "WARNING: $NB_LMTPD is older than Sources/"; }
for p in $PORT_D $PORT_N; do listening $p && die "port 127.0.0.1:$p is already in use"; done

work=$(mktemp -d /tmp/nestbox-syscalls.XXXXXX) || die "mktemp failed"
chmod 755 "$work"
server_pid="" tracer_pid=""
stop_dovecot() { stop_master "$work/dovecot/run/master.pid"; }
stop_nestbox() { [ -n "$server_pid" ] && { kill_wait "$server_pid"; wait "$server_pid" 2>/dev/null; server_pid=""; }; return 0; }
cleanup() {
  local rc=$?
  trap - EXIT INT TERM HUP
  set +u
  [ -n "$tracer_pid" ] && kill -INT "$tracer_pid" 2>/dev/null
  for p in $(children_of $$); do [ "$p" = "$server_pid" ] || kill_tree "$p"; done
  stop_nestbox; stop_dovecot
  if [ $keep = yes ]; then say "work directory kept: $work"; else rm -rf "$work"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# ---------------------------------------------------------------- helpers
tree_of() { # pid: it and all its descendants
  local c
  echo "$1"
  for c in $(children_of "$1"); do tree_of "$c"; done
}
send() { # port messages rcpt
  timeout 900 "$SMTP_SOURCE" -L -d -s 1 -m "$2" -l $SIZE -M bench.example.org \
    -f s@example.org -t "$3" "127.0.0.1:$1" >>"$work/smtp-source.log" 2>&1 &
  wait $!
}
maildir_count() { find "$1/new" "$1/cur" -maxdepth 1 -type f 2>/dev/null | wc -l; }
expect_count() { # maildir want what
  local got; got=$(maildir_count "$1")
  [ "$got" -eq "$2" ] || die "$3: $got messages in $1, expected $2 (logs in $work with --keep)"
}
# strace_sum file...: "syscall calls" lines summed over strace -c summaries
strace_sum() {
  awk '$1 ~ /^[0-9.]+$/ && $NF != "total" && NF >= 5 { n[$NF] += $4 } END { for (s in n) print s, n[s] }' "$@"
}
# perf_sum file...: "cs N" and "cpu_ms N" summed over perf stat -x, outputs
perf_sum() {
  awk -F, '$3 == "context-switches" { cs += $1 } $3 == "task-clock" { ms += $1 } END { printf "cs %d\ncpu_ms %.3f\n", cs, ms }' "$@"
}
# attach_strace out pids...: strace -f -c on those processes (and their threads) in the
# background; returns once every one is traced
attach_strace() {
  local out=$1 p n=100 args=()
  shift
  for p in "$@"; do args+=(-p "$p"); done
  strace -f -c -o "$out" "${args[@]}" 2>>"$work/strace.log" &
  tracer_pid=$!
  for p in "$@"; do
    while [ $n -gt 0 ] && [ "$(awk '/^TracerPid:/ { print $2 }' /proc/$p/status 2>/dev/null)" != "$tracer_pid" ]; do
      kill -0 "$p" 2>/dev/null || break
      sleep 0.1; n=$((n-1))
    done
  done
  [ $n -gt 0 ] || die "strace did not attach (see $work/strace.log)"
}
detach() { # pid of strace or perf: SIGINT, wait for its summary
  kill -INT "$1" 2>/dev/null; wait "$1" 2>/dev/null
  tracer_pid=""
}

# results: counts[program] = file with "syscall calls" lines (totals), msgs[program] = count
declare -A sysfile perffile msgs
programs=""

# ---------------------------------------------------------------- LMTP
# lmtp_count program port pids-command maildir-of-user: strace run, then perf run
lmtp_count() {
  local prog=$1 port=$2 pidcmd=$3 maildir_of=$4 pids p u want
  u=strace; send "$port" 5 $u@example.test
  expect_count "$($maildir_of $u)" 5 "$prog warm-up"
  pids=$($pidcmd)
  say "  $prog: strace -f -c over $lmtp_n LMTP deliveries (processes: $(echo $pids)) ..."
  attach_strace "$work/$prog.strace" $pids
  send "$port" "$lmtp_n" $u@example.test
  detach "$tracer_pid"
  expect_count "$($maildir_of $u)" $((lmtp_n + 5)) "$prog (traced)"
  u=perf; send "$port" 5 $u@example.test
  expect_count "$($maildir_of $u)" 5 "$prog warm-up"
  pids=$($pidcmd)
  say "  $prog: perf stat over $lmtp_n LMTP deliveries, untraced ..."
  perf stat -e context-switches,task-clock -x, -o "$work/$prog.perf" -p "$(echo $pids | tr ' ' ,)" 2>>"$work/perf.log" &
  local stat_pid=$! rec_pid=""
  if [ $perf = yes ] && [ "$prog" = nestbox-lmtpd-dup ]; then
    perf record -g -o "$work/perf.data" -p "$(echo $pids | tr ' ' ,)" >>"$work/perf.log" 2>&1 &
    rec_pid=$!
  fi
  sleep 1   # perf attaches
  local t0 t1
  t0=$(date +%s.%N); send "$port" "$lmtp_n" $u@example.test; t1=$(date +%s.%N)
  detach $stat_pid
  [ -n "$rec_pid" ] && detach $rec_pid
  expect_count "$($maildir_of $u)" $((lmtp_n + 5)) "$prog (untraced)"
  say "    untraced: $(awk -v m=$lmtp_n -v a=$t0 -v b=$t1 'BEGIN { printf "%.1f msg/s", m / (b - a) }')"
  strace_sum "$work/$prog.strace" >"$work/$prog.sys"
  perf_sum "$work/$prog.perf" >"$work/$prog.cs"
  sysfile[$prog]=$work/$prog.sys perffile[$prog]=$work/$prog.cs msgs[$prog]=$lmtp_n
  programs="$programs $prog"
}

nestbox_pids() { tree_of "$server_pid"; }
nestbox_maildir() { echo "$work/$nb_id/mail/$1"; }
dovecot_pids() { tree_of "$(cat "$work/dovecot/run/master.pid")"; }
dovecot_maildir() { echo "$work/dovecot/mail/$1"; }

say "LMTP ..."
for dup in yes no; do
  nb_id=nestbox-lmtpd-$([ $dup = yes ] && echo dup || echo nodup)
  d=$work/$nb_id
  mkdir -p "$d/mail"; chown vmail:"$(id -g vmail)" "$d/mail"
  nestbox_write_conf "$d" $PORT_N $dup
  "$NB_LMTPD" -C "$d/nestbox.conf" -L 2>>"$d/lmtpd.log" </dev/null &
  server_pid=$!
  wait_port $PORT_N $server_pid || { tail -n 20 "$d/lmtpd.log" >&2; die "nestbox-lmtpd did not start"; }
  lmtp_count "$nb_id" $PORT_N nestbox_pids nestbox_maildir
  stop_nestbox
done
d=$work/dovecot
mkdir -p "$d/run" "$d/state" "$d/mail"; chown vmail:"$(id -g vmail)" "$d/mail"
dovecot_write_conf "$d" $PORT_D
dovecot -c "$d/dovecot.conf" || { tail -n 20 "$d/dovecot.log" >&2; die "Dovecot did not start"; }
wait_port $PORT_D || die "Dovecot LMTP is not listening"
lmtp_count dovecot-lmtp $PORT_D dovecot_pids dovecot_maildir
stop_dovecot
# dovecot-lda runs as vmail and appends to the same log file, which the master created as root;
# it runs with no Dovecot started, as in bench/deliver.sh: the stopped master's sockets go.
chown vmail "$d/dovecot.log"
rm -rf "$d/run"; mkdir "$d/run"

# ---------------------------------------------------------------- pipe
# A 4 KiB message with its own Message-ID: message i
message() {
  printf 'From: Bench <bench@example.org>\nTo: alice@example.test\nSubject: benchmark %d\n' "$1"
  printf 'Message-ID: <bench.%d.%s@example.org>\nDate: Thu, 26 Nov 2026 10:00:00 +0000\n\n' "$1" "$2"
  local i=0
  while [ $i -lt 63 ]; do printf '%063d\n' $i; i=$((i+1)); done
}
mkdir -p "$work/msgs"
for ((i = 0; i < 2 * pipe_n + 10; i++)); do message $i "$$" >"$work/msgs/$i"; done

# deliver_cmd program: the command line of one pipe delivery (run as vmail by the caller);
# deliver_env program: its environment besides PATH
deliver_cmd() {
  case $1 in
    nestbox-deliver-*) echo "$NB_DELIVER -C $work/$1/nestbox.conf -r bench@example.org alice" ;;
    dovecot-lda) echo "$LDA -c $work/dovecot/dovecot.conf -f bench@example.org" ;;
  esac
}
deliver_env() { case $1 in dovecot-lda) echo "USER=alice HOME=$work/dovecot/mail/alice" ;; esac; }
pipe_count() { # program maildir
  local prog=$1 md=$2 cmd envs i m=0
  cmd=$(deliver_cmd "$prog") envs=$(deliver_env "$prog")
  # Warm-up: the first deliveries create the mailbox.
  for ((i = 0; i < 5; i++)); do
    # shellcheck disable=SC2086
    cat "$work/msgs/$m" | env -i PATH=/usr/bin:/bin $envs setpriv --reuid vmail --regid "$(id -g vmail)" --clear-groups $cmd \
      || die "$prog failed"
    m=$((m + 1))
  done
  say "  $prog: strace -f -c over $pipe_n pipe deliveries ..."
  mkdir -p "$work/$prog.strace.d" "$work/$prog.perf.d"
  for ((i = 0; i < pipe_n; i++)); do
    # shellcheck disable=SC2086
    cat "$work/msgs/$m" | env -i PATH=/usr/bin:/bin $envs strace -f -c -u vmail -o "$work/$prog.strace.d/$i" $cmd \
      || die "$prog failed under strace"
    m=$((m + 1))
  done
  say "  $prog: perf stat over $pipe_n pipe deliveries, untraced ..."
  local t0 t1
  t0=$(date +%s.%N)
  for ((i = 0; i < pipe_n; i++)); do
    # shellcheck disable=SC2086
    cat "$work/msgs/$m" | env -i PATH=/usr/bin:/bin $envs perf stat -e context-switches,task-clock -x, -o "$work/$prog.perf.d/$i" \
      setpriv --reuid vmail --regid "$(id -g vmail)" --clear-groups $cmd || die "$prog failed under perf stat"
    m=$((m + 1))
  done
  t1=$(date +%s.%N)
  expect_count "$md" $((2 * pipe_n + 5)) "$prog"
  say "    untraced (perf stat around each): $(awk -v m=$pipe_n -v a=$t0 -v b=$t1 'BEGIN { printf "%.2f ms/msg", 1000 * (b - a) / m }')"
  strace_sum "$work/$prog.strace.d"/* >"$work/$prog.sys"
  perf_sum "$work/$prog.perf.d"/* >"$work/$prog.cs"
  sysfile[$prog]=$work/$prog.sys perffile[$prog]=$work/$prog.cs msgs[$prog]=$pipe_n
  programs="$programs $prog"
}

say "pipe ..."
for dup in yes no; do
  p=nestbox-deliver-$([ $dup = yes ] && echo dup || echo nodup)
  d=$work/$p
  mkdir -p "$d/mail"; chown vmail:"$(id -g vmail)" "$d/mail"
  nestbox_write_conf "$d" $PORT_N $dup
  pipe_count "$p" "$d/mail/alice"
done
pipe_count dovecot-lda "$work/dovecot/mail/alice"

# ---------------------------------------------------------------- tables
label() {
  case $1 in
    nestbox-lmtpd-dup) echo "nestbox-lmtpd, dup on" ;;
    nestbox-lmtpd-nodup) echo "nestbox-lmtpd, dup off" ;;
    dovecot-lmtp) echo "Dovecot LMTP" ;;
    nestbox-deliver-dup) echo "nestbox-deliver, dup on" ;;
    nestbox-deliver-nodup) echo "nestbox-deliver, dup off" ;;
    dovecot-lda) echo "dovecot-lda" ;;
  esac
}
per() { # program syscall-names...: calls per message
  local prog=$1; shift
  awk -v names=" $* " -v m="${msgs[$prog]}" 'index(names, " " $1 " ") { n += $2 } END { printf "%.2f", n / m }' "${sysfile[$prog]}"
}
all() { awk -v m="${msgs[$1]}" '{ n += $2 } END { printf "%.1f", n / m }' "${sysfile[$1]}"; }
csv() { awk -v k="$2" -v m="${msgs[$1]}" -v f="$3" '$1 == k { printf f, $2 / m }' "${perffile[$1]}"; }
{
  echo
  echo "System calls per delivered message, 4 KiB messages: LMTP $lmtp_n in one session, pipe $pipe_n processes"
  echo "nestbox $(git -C "$repo" rev-parse --short HEAD 2>/dev/null)$( [ -n "$(git -C "$repo" status --porcelain -- Sources 2>/dev/null)" ] && echo '+changes')$stale, dovecot $(dovecot --version | awk '{ print $1 }'), $(uname -r), $(date -u '+%Y-%m-%d %H:%M UTC')"
  printf '%-26s %6s %6s %6s %6s %6s %6s %7s %6s %6s\n' program fsync open rename unlink write stat all cs cpu
  for prog in $programs; do
    printf '%-26s %6s %6s %6s %6s %6s %6s %7s %6s %6s\n' "$(label $prog)" \
      "$(per $prog fsync fdatasync)" "$(per $prog open openat openat2 creat)" \
      "$(per $prog rename renameat renameat2)" "$(per $prog unlink unlinkat)" \
      "$(per $prog write pwrite64 writev pwritev pwritev2)" \
      "$(per $prog stat fstat lstat newfstatat statx)" "$(all $prog)" \
      "$(csv $prog cs %.2f)" "$(csv $prog cpu_ms %.2f)"
  done
  echo "(cs: context switches, cpu: CPU ms, both per message from perf stat in a second, untraced run)"
  echo
  echo "Every system call made at least 0.1 times per message by one of them (calls per message):"
  printf '%-16s' syscall
  for prog in $programs; do printf ' %10s' "${prog/nestbox-/nb-}"; done
  echo
  cat "${sysfile[@]}" | awk '{ print $1 }' | sort -u | while read -r sc; do
    line=$(printf '%-16s' "$sc") keep_it=no
    for prog in $programs; do
      v=$(awk -v s="$sc" -v m="${msgs[$prog]}" '$1 == s { n = $2 } END { printf "%.2f", n / m }' "${sysfile[$prog]}")
      awk -v v="$v" 'BEGIN { exit !(v >= 0.1) }' && keep_it=yes
      line="$line $(printf '%10s' "$v")"
    done
    [ $keep_it = yes ] && echo "$line"
  done
  if [ $perf = yes ]; then
    echo
    echo "perf record -g -p <nestbox-lmtpd, dup on> during its untraced $lmtp_n-message LMTP run (CPU samples only: time"
    echo "waiting for the disk is not in it); perf report --no-children --sort dso, then --sort dso,symbol (top 30):"
    demangle() { if command -v swift >/dev/null 2>&1; then swift demangle --simplified; else cat; fi; }
    report() {
      perf report -i "$work/perf.data" --no-children --stdio -g none --percent-limit 0.5 "$@" 2>/dev/null \
        | grep -v '^#' | grep -v '^$' | sed 's/[[:space:]]*$//; s/[[:space:]]*-[[:space:]]*-$//'
    }
    report --sort dso | head -n 12
    echo
    report --sort dso,symbol | head -n 30 | demangle
    echo
    echo "the same with --children (time spent in a function and what it calls), entries of 5% and more:"
    perf report -i "$work/perf.data" --children --stdio -g none --percent-limit 5 --sort symbol 2>/dev/null \
      | grep -v '^#' | grep -v '^$' | head -n 60 | demangle | sed 's/[[:space:]]*$//'
  fi
}
