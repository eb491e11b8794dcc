#!/bin/bash
# Side-by-side benchmark: nestbox-reconstruct against `doveadm force-resync` on identical copies
# of one Maildir folder of N messages (default 100000, 1 KiB each), in three states, one run each
# (shared/docs/BENCHMARKS.md: ratios measured in the same run, on the same disk). Prints wall
# time and peak RSS of both, the ratios Nestbox/Dovecot, and how many UIDs each kept.
#
#   bench/reconstruct.sh [--install] [--messages N] [--keep]
#
#   --install     apt-get install dovecot-core when doveadm is missing (without it: exit 69).
#   --messages N  messages in the folder (default 100000).
#   --keep        keep the work directory (/tmp/nestbox-reconstruct.XXXXXX).
#
# Needs root (doveadm and nestbox-reconstruct switch to vmail, created if missing). Everything
# is set up in a fresh temporary directory; nothing outside it is touched.
#
# Method:
#   - The folder: N files written directly into cur/ with Maildir names
#     <secs>.M<usec>P<pid>Q<n>.<host>,S=<size>,W=<vsize>:2,S (seconds spread over N/10 s,
#     so that Dovecot's order is not the order of the names), then numbered once by Dovecot:
#     `doveadm force-resync` then `doveadm index` with a throwaway configuration (Maildir, no
#     services), so the folder has a dovecot-uidlist with N UIDs and Dovecot's dovecot.index*,
#     as one served by Dovecot IMAP has. Its uid -> file map is saved.
#   - For each state, two copies of that folder (cp -a), the same damage applied to both:
#       1 intact            nestbox-reconstruct -n (check only)  vs  doveadm force-resync
#       2 10% of records    every 10th record line removed from dovecot-uidlist
#         deleted           nestbox-reconstruct (repair)         vs  doveadm force-resync
#       3 uidlist deleted   dovecot-uidlist removed (dovecot.index* kept)
#                           nestbox-reconstruct (repair)         vs  doveadm force-resync
#     `sync` before each timed run; each program runs once, as root (both switch to vmail
#     themselves), through GNU time: wall time from date +%s.%N around it, peak RSS from %M.
#     Nestbox runs first, then Dovecot, on its own copy.
#   - nestbox-reconstruct: .build/release (built with `swift build -c release --product
#     nestbox-reconstruct` when missing), run twice on two copies: with default options (it
#     stats every file and checks its size against the name's ,S=, which Dovecot does not),
#     and with -s (sizes taken from the names: the same work as force-resync, which reads
#     only the directories and the list).
#   - After each Nestbox run the result is checked, and a wrong one marks the row BAD (exit 1):
#       state 1: exit 0 and dovecot-uidlist byte for byte unchanged;
#       states 2 and 3: exit 0, every file in cur/ and new/ has exactly one record, no UID twice,
#       every record that survived the damage (state 2: the 90% left) keeps its UID and file,
#       the UIDVALIDITY is kept (state 3: only reported), and the header's N is above every UID.
#     For both programs the count of UIDs equal to the ones before the damage is printed
#     ("kept"); under a new UIDVALIDITY none is kept for a client (the equal numbers are shown).

set -u
export LC_ALL=C

repo=$(cd "$(dirname "$0")/.." && pwd)
messages=100000 install=no keep=no

while [ $# -gt 0 ]; do
  case $1 in
    --install) install=yes ;;
    --messages) shift; messages=${1:-}; case $messages in ''|*[!0-9]*|0) echo "--messages needs a number >= 1" >&2; exit 64 ;; esac ;;
    --keep) keep=yes ;;
    -h|--help) sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 64 ;;
  esac
  shift
done

say() { printf '%s\n' "$*" >&2; }
die() { say "reconstruct.sh: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "needs root (doveadm and nestbox-reconstruct switch to vmail)"

# ---------------------------------------------------------------- packages and accounts
if ! command -v doveadm >/dev/null 2>&1; then
  if [ $install = yes ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null || die "apt-get update failed"
    apt-get install -y -q dovecot-core || die "apt-get install dovecot-core failed"
  else
    say "missing Debian package: dovecot-core"
    say "install it with: apt-get install -y dovecot-core   (or run: bench/reconstruct.sh --install)"
    exit 69
  fi
fi
[ -x /usr/bin/time ] || die "/usr/bin/time not found (package time)"
for t in perl awk sort cmp sync setpriv; do
  command -v $t >/dev/null 2>&1 || die "$t not found"
done
id vmail >/dev/null 2>&1 || useradd -r -d /nonexistent -s /usr/sbin/nologin vmail || die "cannot create user vmail"
VGID=$(id -g vmail)

# ---------------------------------------------------------------- Nestbox binary
nb_bin=$repo/.build/release/nestbox-reconstruct
if [ ! -x "$nb_bin" ]; then
  say "building nestbox-reconstruct (swift build -c release --product nestbox-reconstruct) ..."
  (cd "$repo" && swift build -c release --product nestbox-reconstruct) >&2 || die "build failed"
  [ -x "$nb_bin" ] || die "the build did not produce $nb_bin"
fi
nb_stale=""
if [ -n "$(find "$repo/Sources" "$repo/Package.swift" -newer "$nb_bin" -type f 2>/dev/null | head -n 1)" ]; then
  say "WARNING: $nb_bin is older than Sources/ (rebuild: swift build -c release --product nestbox-reconstruct)"
  nb_stale=" (binary older than Sources/)"
fi

# ---------------------------------------------------------------- work dir
work=$(mktemp -d /tmp/nestbox-reconstruct.XXXXXX) || die "mktemp failed"
chmod 755 "$work"
cleanup() {
  local rc=$?
  trap - EXIT INT TERM HUP
  if [ $keep = yes ]; then say "work directory kept: $work"; else rm -rf "$work"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

mkdir -p "$work/dovecot/run" "$work/dovecot/state"
dc=$work/dovecot/dovecot.conf
cat > "$dc" <<EOF
# Throwaway configuration: no services, no userdb lookup (doveadm takes USER and HOME from
# the environment, as a mail command run by the user does); the folder is given with -o.
base_dir = $work/dovecot/run
state_dir = $work/dovecot/state
log_path = $work/dovecot/dovecot.log
protocols =
ssl = no
mail_uid = vmail
mail_gid = vmail
first_valid_uid = 1
mail_fsync = always
EOF

# nestbox.conf for a partition at $1: the folder is user/big at $1/big.
nb_conf() {
  printf 'partition-default: %s\nmail_owner: vmail\n' "$1" > "$1.conf"
  echo "$1.conf"
}

now() { date +%s.%N; }

# ---------------------------------------------------------------- the folder
tmpl=$work/template/big
mkdir -p "$tmpl/cur" "$tmpl/new" "$tmpl/tmp"
t_start=$(now)
say "writing $messages messages into cur/ ..."
perl -e '
  my ($dir, $n) = @ARGV;
  my $body = join("", map { sprintf("%071d\n", $_) } 0 .. 11);
  my $base = time() - 86400 - int($n / 10);
  srand(42);
  for my $i (1 .. $n) {
    my $msg = sprintf("From: Filler <filler\@example.org>\nTo: big\@example.test\n" .
      "Subject: filler %07d\nMessage-ID: <filler.%07d\@example.org>\n" .
      "Date: Thu, 26 Nov 2026 10:00:00 +0000\n\n%s", $i, $i, $body);
    my $size = length($msg);
    my $lines = ($msg =~ tr/\n//);
    my $vsize = $size + $lines;
    # Ten messages a second, in a shuffled microsecond order within each second.
    my $secs = $base + int(($i - 1) / 10);
    my $usec = int(rand(1000000));
    my $name = sprintf("%d.M%dP%dQ%d.bench,S=%d,W=%d:2,S", $secs, $usec, 1000 + $i % 50000, $i, $size, $vsize);
    open(my $f, ">", "$dir/cur/$name") or die "$name: $!";
    print $f $msg; close($f) or die "$name: $!";
  }' "$tmpl" "$messages" || die "writing the messages failed"
chown -R vmail:"$VGID" "$work/template"
say "numbering them once with doveadm force-resync + doveadm index ..."
timeout 900 env USER=big HOME="$tmpl" doveadm -c "$dc" -o "mail_location=maildir:$tmpl" force-resync INBOX || die "doveadm force-resync failed"
timeout 900 env USER=big HOME="$tmpl" doveadm -c "$dc" -o "mail_location=maildir:$tmpl" index INBOX || die "doveadm index failed"
# uid -> stem map: every record line is "<uid> [<fields>] :<file base name>".
uidmap() { tail -n +2 "$1/dovecot-uidlist" 2>/dev/null | awk '$1 ~ /^[0-9]+$/ { s = $NF; sub(/^:/, "", s); print $1, s }' | sort -k2,2; }
header() { head -n 1 "$1/dovecot-uidlist" 2>/dev/null; }
uidvalidity() { header "$1" | tr ' ' '\n' | sed -n 's/^V//p'; }
uidmap "$tmpl" > "$work/before.map"
c=$(wc -l < "$work/before.map")
[ "$c" -eq "$messages" ] || die "doveadm numbered $c messages, expected $messages"
ls "$tmpl"/dovecot.index* >/dev/null 2>&1 || die "doveadm index wrote no dovecot.index"
V0=$(uidvalidity "$tmpl")
say "  folder ready: $messages messages, UIDVALIDITY $V0, $(du -sh "$tmpl" | cut -f1) ($(awk -v a=$t_start -v b=$(now) 'BEGIN { printf "%.0f", b - a }') s)"

# ---------------------------------------------------------------- runs
# timed out err cmd...: one run through GNU time; sets T (wall s), M (peak RSS KiB), RC.
timed() {
  local out=$1 err=$2 t0 t1; shift 2
  sync
  t0=$(now)
  /usr/bin/time -o "$work/time.out" -f '%M' "$@" >"$out" 2>"$err"
  RC=$?
  t1=$(now)
  T=$(awk -v a=$t0 -v b=$t1 'BEGIN { printf "%.3f", b - a }')
  M=$(tail -n 1 "$work/time.out")
}

# kept dir: how many of the UIDs before the damage the folder has now (same uid, same stem)
kept() { uidmap "$1" | join -j 2 -o 1.1,2.1 "$work/before.map" - | awk '$1 == $2' | wc -l; }

# kept_label dir: "kept/N", or with a new UIDVALIDITY "0/N (new UIDVALIDITY, k same numbers)":
# a UID under another UIDVALIDITY is not kept as far as a client can tell.
kept_label() {
  local k; k=$(kept "$1")
  if [ "$(uidvalidity "$1")" = "$V0" ]; then echo "$k/$messages"; else echo "0/$messages (new UIDVALIDITY, $k same numbers)"; fi
}

# verify dir survivors-file: the checks of the header comment; prints what is wrong, if anything.
verify() {
  local d=$1 surv=$2 files recs dup lost v n max
  files=$(find "$d/cur" "$d/new" -maxdepth 1 -type f | sed 's|.*/||; s/:2,.*//' | sort)
  uidmap "$d" > "$work/after.map"
  recs=$(wc -l < "$work/after.map")
  [ "$recs" -eq "$messages" ] || echo "$recs records, expected $messages"
  [ "$(echo "$files" | wc -l)" -eq "$messages" ] || echo "$(echo "$files" | wc -l) files, expected $messages"
  [ "$(awk '{ print $2 }' "$work/after.map")" = "$files" ] || echo "the records do not name exactly the files"
  dup=$(awk '{ print $1 }' "$work/after.map" | sort | uniq -d | wc -l)
  [ "$dup" -eq 0 ] || echo "$dup UIDs given twice"
  lost=$(join -j 2 -o 1.1,2.1,0 "$surv" "$work/after.map" | awk '$1 != $2' | wc -l)
  lost=$(( lost + $(wc -l < "$surv") - $(join -j 2 "$surv" "$work/after.map" | wc -l) ))
  [ "$lost" -eq 0 ] || echo "$lost surviving records lost their UID"
  v=$(uidvalidity "$d")
  [ "$v" = "$V0" ] || [ "$3" = any ] || echo "UIDVALIDITY $V0 became $v"
  n=$(header "$d" | tr ' ' '\n' | sed -n 's/^N//p')
  max=$(awk '{ print $1 }' "$work/after.map" | sort -n | tail -n 1)
  # (Dovecot appends records without rewriting the header: its own N may be stale, so the
  # check applies to a list Nestbox wrote.)
  [ "$4" = unchanged ] || { [ -n "$n" ] && [ "$n" -gt "${max:-0}" ]; } || echo "N ${n:-missing} not above the highest UID ${max:-none}"
}

declare -A T_N T_D M_N M_D OK K_N K_D
bad=0
for s in 1 2 3; do
  for who in n s d; do
    mkdir -p "$work/s$s$who"
    cp -a "$tmpl" "$work/s$s$who/big"
    f=$work/s$s$who/big/dovecot-uidlist
    case $s in
      2) awk 'NR == 1 || (NR - 1) % 10 != 0' "$f" > "$f.new" && mv "$f.new" "$f" && chown vmail:"$VGID" "$f" ;;
      3) rm -f "$f" ;;
    esac
  done
  chown vmail:"$VGID" "$work/s${s}n" "$work/s${s}s" "$work/s${s}d"
  # The records that survived the damage.
  uidmap "$work/s${s}n/big" > "$work/surv.$s"
  say "state $s: $(wc -l < "$work/surv.$s") records in dovecot-uidlist"
  cp -p "$work/s${s}n/big/dovecot-uidlist" "$work/uidlist.$s" 2>/dev/null

  # Twice: default options (every file stat'ed, its size checked against ,S=: more than
  # Dovecot checks), then -s (sizes taken from the names, the work force-resync does).
  for v in n s; do
    r=$s$v
    conf=$(nb_conf "$work/s$r")
    opts=()
    [ $v = s ] && opts+=(-s)
    [ $s = 1 ] && opts+=(-n)
    timed "$work/nb.$r.out" "$work/nb.$r.err" "$nb_bin" -C "$conf" "${opts[@]}" user/big
    T_N[$r]=$T M_N[$r]=$M
    problems=""
    [ "$RC" -eq 0 ] || problems="exit $RC; "
    if [ $s = 1 ]; then
      cmp -s "$work/uidlist.1" "$work/s$r/big/dovecot-uidlist" || problems="${problems}dovecot-uidlist changed; "
    fi
    problems="$problems$(verify "$work/s$r/big" "$work/surv.$s" "$([ $s = 3 ] && echo any || echo same)" "$([ $s = 1 ] && echo unchanged || echo written)" | tr '\n' ';')"
    K_N[$r]=$(kept_label "$work/s$r/big")
    if [ -n "$problems" ]; then
      OK[$r]=BAD; bad=1
      say "  nestbox ${opts[*]} state $s: BAD: $problems"
      head -n 5 "$work/nb.$r.err" "$work/nb.$r.out" | sed 's/^/    /' >&2
    else
      OK[$r]=ok
    fi
    say "  nestbox ${opts[*]}: ${T_N[$r]} s, ${M_N[$r]} KiB, exit $RC, $(grep -c . "$work/nb.$r.out") report lines"
  done

  timed "$work/dv.$s.out" "$work/dv.$s.err" env USER=big HOME="$work/s${s}d/big" doveadm -c "$dc" -o "mail_location=maildir:$work/s${s}d/big" force-resync INBOX
  T_D[$s]=$T M_D[$s]=$M
  [ "$RC" -eq 0 ] || { say "  doveadm force-resync exited $RC"; cat "$work/dv.$s.err" >&2; T_D[$s]=n/a; }
  K_D[$s]=$(kept_label "$work/s${s}d/big")
  say "  dovecot: ${T_D[$s]} s, ${M_D[$s]} KiB"
  [ $keep = yes ] || rm -rf "$work/s${s}n" "$work/s${s}s" "$work/s${s}d"
done

# ---------------------------------------------------------------- table
ratio() { case "$1$2" in *n/a*) echo "-" ;; *) awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }' ;; esac; }
label() {
  case $1 in
    1n) echo "1 intact (-n)" ;;
    1s) echo "1 intact (-n -s)" ;;
    2n) echo "2 10% of records deleted" ;;
    2s) echo "2 ... (-s)" ;;
    3n) echo "3 dovecot-uidlist deleted" ;;
    3s) echo "3 ... (-s)" ;;
  esac
}
{
  echo
  echo "reconstruct of one folder of $messages messages (1 KiB), one run each; $(nproc) cores, $(uname -r)"
  echo "dovecot $(dovecot --version 2>/dev/null | awk '{ print $1 }') doveadm force-resync, nestbox $(git -C "$repo" rev-parse --short HEAD 2>/dev/null)$( [ -n "$(git -C "$repo" status --porcelain -- Sources 2>/dev/null)" ] && echo '+changes')${nb_stale} nestbox-reconstruct"
  echo "time: wall seconds; RSS: peak KiB; N/D time above 1: Nestbox slower; kept: UIDs equal to those before the damage"
  printf '%-27s %8s %8s %6s  %8s %8s %6s  %-6s %-44s %s\n' state "N time" "D time" "N/D" "N RSS" "D RSS" "N/D" check "N kept" "D kept"
  for s in 1 2 3; do
    for v in n s; do
      r=$s$v
      printf '%-27s %8s %8s %6s  %8s %8s %6s  %-6s %-44s %s\n' "$(label $r)" "${T_N[$r]}" "${T_D[$s]}" "$(ratio "${T_N[$r]}" "${T_D[$s]}")" \
        "${M_N[$r]}" "${M_D[$s]}" "$(ratio "${M_N[$r]}" "${M_D[$s]}")" "${OK[$r]}" "${K_N[$r]}" "${K_D[$s]}"
    done
  done
}
[ $bad -eq 0 ] || { say "reconstruct.sh: a Nestbox result was wrong (BAD above)"; exit 1; }
exit 0
