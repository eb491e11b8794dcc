#!/bin/bash
# Side-by-side benchmark: `nestbox-quota -f` against `doveadm quota recalc` on identical copies
# of one user of N messages (default 100000, 1 KiB each) spread over INBOX and 4 folders, one
# run each (shared/docs/BENCHMARKS.md: ratios from the same run, on the same disk). Prints wall
# time and peak RSS of both, the ratios Nestbox/Dovecot, and whether both counted the same.
#
#   bench/quota.sh [--messages N] [--keep]
#
# Needs root and doveadm (Debian package dovecot-core); both programs switch to vmail.
# Method: the messages are written straight into cur/ with Maildir names carrying ,S= (as
# deliveries name them), a maildirsize with a limit and a wrong usage line is put in the root,
# the tree is copied (cp -a), `sync`, then nestbox-quota -f -q user/big on one copy and
# `doveadm quota recalc` (quota = maildir) on the other, each through GNU time. Both must end
# with the same usage line (the true count); a difference marks the row BAD (exit 1).

set -u
export LC_ALL=C
repo=$(cd "$(dirname "$0")/.." && pwd)
messages=100000 keep=no
while [ $# -gt 0 ]; do
  case $1 in
    --messages) shift; messages=${1:-}; case $messages in ''|*[!0-9]*|0) echo "--messages needs a number >= 1" >&2; exit 64 ;; esac ;;
    --keep) keep=yes ;;
    -h|--help) sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 64 ;;
  esac
  shift
done
say() { printf '%s\n' "$*" >&2; }
die() { say "quota.sh: $*"; exit 1; }
[ "$(id -u)" -eq 0 ] || die "needs root"
command -v doveadm >/dev/null 2>&1 || { say "missing Debian package: dovecot-core (apt-get install -y dovecot-core)"; exit 69; }
[ -x /usr/bin/time ] || die "/usr/bin/time not found (package time)"
id vmail >/dev/null 2>&1 || useradd -r -d /nonexistent -s /usr/sbin/nologin vmail || die "cannot create user vmail"
VGID=$(id -g vmail)

nb_bin=$repo/.build/release/nestbox-quota
if [ ! -x "$nb_bin" ] || [ -n "$(find "$repo/Sources" "$repo/Package.swift" -newer "$nb_bin" -type f 2>/dev/null | head -n 1)" ]; then
  say "building nestbox-quota (swift build -c release --product nestbox-quota) ..."
  (cd "$repo" && swift build -c release --product nestbox-quota) >&2 || die "build failed"
fi

work=$(mktemp -d /tmp/nestbox-quota.XXXXXX) || die "mktemp failed"
chmod 755 "$work"
trap '[ $keep = yes ] && say "work directory kept: $work" || rm -rf "$work"' EXIT
mkdir -p "$work/dovecot/run" "$work/dovecot/state"
dc=$work/dovecot/dovecot.conf
cat > "$dc" <<EOF
base_dir = $work/dovecot/run
state_dir = $work/dovecot/state
log_path = $work/dovecot/dovecot.log
protocols =
ssl = no
mail_uid = vmail
mail_gid = vmail
first_valid_uid = 1
mail_plugins = quota
plugin {
  quota = maildir:User quota
}
EOF

tmpl=$work/template/big
mkdir -p "$work/template"
say "writing $messages messages ..."
perl -e '
  my ($root, $n) = @ARGV;
  my @dirs = ($root, map { "$root/.F$_" } 1 .. 4);
  for my $d (@dirs) { mkdir $d; mkdir "$d/$_" for qw(cur new tmp); }
  for my $d (@dirs[1 .. 4]) { open(my $m, ">", "$d/maildirfolder"); close($m); }
  my $body = join("", map { sprintf("%071d\n", $_) } 0 .. 11);
  for my $i (1 .. $n) {
    my $msg = sprintf("Subject: filler %07d\n\n%s", $i, $body);
    my $d = $dirs[$i % 5];
    my $name = sprintf("%d.M%dP%dQ%d.bench,S=%d:2,S", 1790000000 + $i, $i, 1000, $i, length($msg));
    open(my $f, ">", "$d/cur/$name") or die "$name: $!";
    print $f $msg; close($f) or die;
  }
  open(my $q, ">", "$root/maildirsize"); print $q "10485760000S,1000000C\n1 1\n"; close($q);
' "$tmpl" "$messages" || die "writing the messages failed"
chown -R vmail:"$VGID" "$work/template"
for who in n d; do mkdir -p "$work/$who"; cp -a "$tmpl" "$work/$who/big"; done
chown vmail:"$VGID" "$work/n" "$work/d"
printf 'partition-default: %s\nmail_owner: vmail\n' "$work/n" > "$work/n.conf"

timed() {  # out err cmd...: sets T (wall s), M (peak KiB), RC
  local out=$1 err=$2 t0 t1; shift 2
  sync
  t0=$(date +%s.%N)
  /usr/bin/time -o "$work/time.out" -f '%M' "$@" >"$out" 2>"$err"
  RC=$?
  t1=$(date +%s.%N)
  T=$(awk -v a=$t0 -v b=$t1 'BEGIN { printf "%.3f", b - a }')
  M=$(tail -n 1 "$work/time.out")
}
timed "$work/nb.out" "$work/nb.err" "$nb_bin" -C "$work/n.conf" -f -q user/big
TN=$T MN=$M RN=$RC
timed "$work/dv.out" "$work/dv.err" env USER=big HOME="$work/d/big" doveadm -c "$dc" -o "mail_location=maildir:$work/d/big" quota recalc
TD=$T MD=$M RD=$RC
usage_n=$(sed -n 2p "$work/n/big/maildirsize") usage_d=$(sed -n 2p "$work/d/big/maildirsize")
check=ok
[ $RN -eq 0 ] || { check=BAD; say "nestbox-quota exited $RN: $(head -3 "$work/nb.err")"; }
[ $RD -eq 0 ] || say "doveadm quota recalc exited $RD: $(head -3 "$work/dv.err")"
[ "$usage_n" = "$usage_d" ] || { check=BAD; say "usage differs: nestbox '$usage_n', dovecot '$usage_d'"; }
[ "$(echo "$usage_n" | awk '{ print $2 }')" = "$messages" ] || { check=BAD; say "nestbox counted '$usage_n', expected $messages messages"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
echo
echo "quota recalculation of one user of $messages messages in 5 folders, one run each; $(nproc) cores, $(uname -r)"
echo "dovecot $(dovecot --version 2>/dev/null | awk '{ print $1 }') doveadm quota recalc, nestbox $(git -C "$repo" rev-parse --short HEAD 2>/dev/null) nestbox-quota -f"
printf '%-10s %8s %8s %6s  %8s %8s %6s  %-6s %s\n' "" "N time" "D time" "N/D" "N RSS" "D RSS" "N/D" check "usage (N | D)"
printf '%-10s %8s %8s %6s  %8s %8s %6s  %-6s %s\n' "-f" "$TN" "$TD" "$(ratio $TN $TD)" "$MN" "$MD" "$(ratio $MN $MD)" "$check" "$usage_n | $usage_d"
[ $check = ok ]
