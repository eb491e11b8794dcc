#!/bin/bash
# Side-by-side benchmark: nestbox-purge against `doveadm expunge mailbox INBOX deleted` and
# against the raw `find ... -delete` of the same files, each on its own copy of one Maildir
# folder of N messages (default 100000, about 1 KiB each) of which every third is \Deleted
# (33k of 100k). Each program runs once per round (default 3 rounds, the order rotated each
# round); the medians and their ratios are reported (the aim: purge within 10% of raw unlink
# time).
#
#   bench/purge.sh [--install] [--messages N] [--rounds N] [--bin DIR] [--keep]
#
#   --install     apt-get install dovecot-core when doveadm is missing (without it: exit 69).
#   --messages N  messages in the folder (default 100000).
#   --rounds N    runs of each program (default 3); round k starts with the k-th program of
#                 nestbox, dovecot, find, so that none always runs first after the set-up.
#   --bin DIR     directory holding nestbox-purge (default: .build/release, built when missing).
#   --keep        keep the work directory (/tmp/nestbox-purge.XXXXXX).
#
# Needs root (doveadm and nestbox-purge switch to vmail, created if missing); everything is set
# up in a fresh temporary directory.
#
# Method:
#   - The folder: N files in cur/, `<secs>.M<usec>P<pid>Q<n>.bench,S=<size>,W=<vsize>:2,S`,
#     every third one `:2,ST`; numbered once by Dovecot (`doveadm force-resync` + `doveadm
#     index`), so it has the dovecot-uidlist and dovecot.index* of a folder Dovecot serves, and
#     a maildirsize counting every file. Its uid -> file map is saved.
#   - A fresh copy (cp -a) for every run; `sync` before each timed run; through GNU time
#     (wall time from date +%s.%N around it, peak RSS from %M); the median of the rounds:
#       nestbox   nestbox-purge -q -f user/big   (scan under the uidlist lock, unlink, fsync of
#                 cur/, list rewrite, maildirsize delta)
#       dovecot   doveadm expunge mailbox INBOX deleted   (as vmail, mail_fsync = always)
#       find      find cur -name '*:2,*T*' -delete   (the unlinks alone: no lock, no list,
#                 no quota, no fsync)
#   - Checked after each: no \Deleted file left and N - N/3 files kept; for Nestbox also every
#     survivor has its old UID, the list has no other record, and maildirsize's usage is the
#     survivors' (a wrong result marks the row BAD, exit 1).

set -u
export LC_ALL=C

repo=$(cd "$(dirname "$0")/.." && pwd)
messages=100000 install=no keep=no bin="" rounds=3

while [ $# -gt 0 ]; do
  case $1 in
    --install) install=yes ;;
    --messages) shift; messages=${1:-}; case $messages in ''|*[!0-9]*|0) echo "--messages needs a number >= 1" >&2; exit 64 ;; esac ;;
    --bin) shift; bin=${1:-} ;;
    --rounds) shift; rounds=${1:-}; case $rounds in ''|*[!0-9]*|0) echo "--rounds needs a number >= 1" >&2; exit 64 ;; esac ;;
    --keep) keep=yes ;;
    -h|--help) sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 64 ;;
  esac
  shift
done

say() { printf '%s\n' "$*" >&2; }
die() { say "purge.sh: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "needs root (doveadm and nestbox-purge switch to vmail)"
if ! command -v doveadm >/dev/null 2>&1; then
  [ $install = yes ] || { say "missing Debian package: dovecot-core (apt-get install -y dovecot-core, or --install)"; exit 69; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q dovecot-core >&2 || die "apt-get install dovecot-core failed"
fi
for t in /usr/bin/time perl awk join sort sync; do command -v $t >/dev/null 2>&1 || die "$t not found"; done
id vmail >/dev/null 2>&1 || useradd -r -d /nonexistent -s /usr/sbin/nologin vmail || die "cannot create user vmail"
VGID=$(id -g vmail)

if [ -z "$bin" ]; then
  bin=$repo/.build/release
  if [ ! -x "$bin/nestbox-purge" ]; then
    say "building nestbox-purge (swift build -c release --product nestbox-purge) ..."
    (cd "$repo" && swift build -c release --product nestbox-purge) >&2 || die "build failed"
  fi
fi
nb=$bin/nestbox-purge
[ -x "$nb" ] || die "$nb not found"

work=$(mktemp -d /tmp/nestbox-purge.XXXXXX) || die "mktemp failed"
chmod 755 "$work"
trap '[ $keep = yes ] && say "work directory kept: $work" || rm -rf "$work"' EXIT
trap 'exit 130' INT TERM HUP

mkdir -p "$work/dovecot/run" "$work/dovecot/state"
dc=$work/dovecot/dovecot.conf
printf '%s\n' "base_dir = $work/dovecot/run" "state_dir = $work/dovecot/state" "log_path = $work/dovecot/dovecot.log" \
  "protocols =" "ssl = no" "mail_uid = vmail" "mail_gid = vmail" "first_valid_uid = 1" "mail_fsync = always" > "$dc"
doveadm_on() { local dir=$1; shift; env USER=big HOME="$dir" timeout 900 doveadm -c "$dc" -o "mail_location=maildir:$dir" "$@"; }

# ---------------------------------------------------------------- the folder
tmpl=$work/template/big
mkdir -p "$tmpl/cur" "$tmpl/new" "$tmpl/tmp"
say "writing $messages messages into cur/, every third \\Deleted ..."
perl -e '
  my ($dir, $n) = @ARGV;
  my $body = join("", map { sprintf("%071d\n", $_) } 0 .. 11);
  my $base = time() - 86400 - int($n / 10);
  my ($bytes, $count) = (0, 0);
  srand(42);
  for my $i (1 .. $n) {
    my $msg = sprintf("From: Filler <filler\@example.org>\nTo: big\@example.test\n" .
      "Subject: filler %07d\nMessage-ID: <filler.%07d\@example.org>\n" .
      "Date: Thu, 26 Nov 2026 10:00:00 +0000\n\n%s", $i, $i, $body);
    my $size = length($msg);
    my $vsize = $size + ($msg =~ tr/\n//);
    my $name = sprintf("%d.M%dP%dQ%d.bench,S=%d,W=%d:2,%s", $base + int(($i - 1) / 10), int(rand(1000000)),
                       1000 + $i % 50000, $i, $size, $vsize, $i % 3 == 0 ? "ST" : "S");
    open(my $f, ">", "$dir/cur/$name") or die "$name: $!";
    print $f $msg; close($f) or die "$name: $!";
    $bytes += $size; $count++;
  }
  open(my $q, ">", "$dir/maildirsize") or die "maildirsize: $!";
  print $q "0S\n$bytes $count\n"; close($q);' "$tmpl" "$messages" || die "writing the messages failed"
chown -R vmail:"$VGID" "$work/template"
say "numbering them once with doveadm force-resync + doveadm index ..."
doveadm_on "$tmpl" force-resync INBOX || die "doveadm force-resync failed"
doveadm_on "$tmpl" index INBOX || die "doveadm index failed"
uidmap() { tail -n +2 "$1/dovecot-uidlist" | awk '$1 ~ /^[0-9]+$/ { s = $NF; sub(/^:/, "", s); print $1, s }' | sort -k2,2; }
uidmap "$tmpl" > "$work/before.map"
[ "$(wc -l < "$work/before.map")" -eq "$messages" ] || die "doveadm numbered $(wc -l < "$work/before.map") messages, expected $messages"
deleted=$(find "$tmpl/cur" -name '*:2,*T*' | wc -l)
kept=$((messages - deleted))
# The survivors' uid -> stem, and their bytes.
find "$tmpl/cur" -name '*:2,*' ! -name '*:2,*T*' | sed 's|.*/||; s/:2,.*//' | sort > "$work/survivors"
join -1 2 -2 1 -o 1.1,0 "$work/before.map" "$work/survivors" | sort -k2,2 > "$work/survivors.map"
kept_bytes=$(sed 's/.*,S=\([0-9]*\).*/\1/' "$work/survivors" | awk '{ s += $1 } END { print s + 0 }')
say "  folder ready: $messages messages, $deleted \\Deleted, $(du -sh "$tmpl" | cut -f1)"

# ---------------------------------------------------------------- runs
now() { date +%s.%N; }
# timed name cmd...: one run through GNU time; sets T (wall s), M (peak RSS KiB), RC.
timed() {
  local name=$1 t0 t1; shift
  sync
  t0=$(now)
  /usr/bin/time -o "$work/$name.time" -f '%M' "$@" >"$work/$name.out" 2>"$work/$name.err"
  RC=$?
  t1=$(now)
  T=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
  M=$(tail -n 1 "$work/$name.time")
}

# check dir: what is wrong with a purged copy (nothing printed: right).
check() {
  local d=$1 left t
  t=$(find "$d/cur" "$d/new" -name '*:2,*T*' | wc -l)
  left=$(find "$d/cur" "$d/new" -type f | wc -l)
  [ "$t" -eq 0 ] || echo "$t \\Deleted files left"
  [ "$left" -eq "$kept" ] || echo "$left files left, expected $kept"
}
check_nestbox() {
  local d=$1 usage
  uidmap "$d" > "$work/after.map"
  cmp -s "$work/after.map" "$work/survivors.map" || echo "the list is not the survivors with their old UIDs"
  usage=$(tail -n +2 "$d/maildirsize" | awk '{ b += $1; c += $2 } END { print b + 0, c + 0 }')
  [ "$usage" = "$kept_bytes $kept" ] || echo "maildirsize usage $usage, expected $kept_bytes $kept"
}

declare -A T_ M_ OK TIMES
bad=0
programs=(nestbox dovecot find)
for ((round = 0; round < rounds; round++)); do
for ((k = 0; k < 3; k++)); do
  who=${programs[(round + k) % 3]}
  rm -rf "$work/copy-$who"
  mkdir -p "$work/copy-$who"
  cp -a "$tmpl" "$work/copy-$who/big"
  chown vmail:"$VGID" "$work/copy-$who"
  d=$work/copy-$who/big
  case $who in
    nestbox)
      printf 'partition-default: %s\nmail_owner: vmail\n' "$work/copy-$who" > "$work/$who.conf"
      timed $who "$nb" -C "$work/$who.conf" -q -f user/big ;;
    dovecot) timed $who env USER=big HOME="$d" doveadm -c "$dc" -o "mail_location=maildir:$d" expunge mailbox INBOX deleted ;;
    find) timed $who find "$d/cur" -name '*:2,*T*' -delete ;;
  esac
  TIMES[$who]="${TIMES[$who]:-} $T"
  [ "${M_[$who]:-0}" -ge "$M" ] || M_[$who]=$M
  problems=$( [ "$RC" -eq 0 ] || echo "exit $RC"; check "$d"; [ $who = nestbox ] && check_nestbox "$d")
  if [ -n "$problems" ]; then OK[$who]=BAD; bad=1; say "  $who: BAD: $(echo "$problems" | tr '\n' ';')"; head -n 5 "$work/$who.err" >&2; else OK[$who]=${OK[$who]:-ok}; fi
  say "  round $((round + 1)): $who: $T s, $M KiB, exit $RC"
  [ $keep = yes ] && [ $((round + 1)) -eq "$rounds" ] || rm -rf "$work/copy-$who"
done
done
median() { tr ' ' '\n' | grep . | sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) printf "%.3f", v[(NR + 1) / 2]; else printf "%.3f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
for who in nestbox dovecot find; do T_[$who]=$(echo "${TIMES[$who]}" | median); done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
echo
echo "purge of $deleted \\Deleted messages out of $messages (1 KiB each), median of $rounds rounds; $(nproc) cores, $(uname -r)"
echo "nestbox $(git -C "$repo" rev-parse --short HEAD 2>/dev/null) $nb; dovecot $(dovecot --version 2>/dev/null | awk '{ print $1 }')"
printf '%-48s %8s %9s %9s %9s %s  %s\n' run "time s" "RSS KiB" "/ find" "/ dovecot" check "each round"
for who in nestbox dovecot find; do
  case $who in
    nestbox) label="nestbox-purge -q -f user/big" ;;
    dovecot) label="doveadm expunge mailbox INBOX deleted" ;;
    find) label="find cur -name '*:2,*T*' -delete" ;;
  esac
  printf '%-48s %8s %9s %9s %9s %s  %s\n' "$label" "${T_[$who]}" "${M_[$who]}" "$(ratio "${T_[$who]}" "${T_[find]}")" \
    "$(ratio "${T_[$who]}" "${T_[dovecot]}")" "${OK[$who]}" "${TIMES[$who]# }"
done
[ $bad -eq 0 ] || { say "purge.sh: a result was wrong (BAD above)"; exit 1; }
exit 0
