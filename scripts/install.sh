#!/bin/sh
# Builds and installs Nestbox: the programs (release build, Swift standard library linked
# statically, so they run without the toolchain), the manual pages, the sample configuration
# (never over an existing one), the samples for Postfix, cron and systemd, Dovecot's
# checkpassword program for the SASL users (DIR/lib/nestbox), and, on a real
# install (no --destdir), the mail owner account and the spool. Running it again is safe.
#
#   scripts/install.sh [--prefix DIR] [--destdir DIR] [--no-build] [--from DIR]
#
#   --prefix DIR   where programs and manual pages go (default /usr/local): DIR/bin,
#                  DIR/share/man/man5 and man8, DIR/share/doc/nestbox
#   --destdir DIR  stage everything below DIR (for packages); creates no account or spool
#   --no-build     install the release build that is there (.build/release) without building
#   --from DIR     install the programs found in DIR instead of the release build (implies
#                  --no-build)
#
# The configuration always goes to /etc/nestbox/nestbox.conf (below --destdir), the path the
# programs read by default. When that file exists, the sample is installed beside it as
# nestbox.conf.dist (unless the two are identical).
set -eu
cd "$(dirname "$0")/.."
. scripts/common.sh

prefix=/usr/local
destdir=
build=yes
from=
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix=${2:?--prefix needs a directory}; shift 2 ;;
    --prefix=*) prefix=${1#*=}; shift ;;
    --destdir) destdir=${2:?--destdir needs a directory}; shift 2 ;;
    --destdir=*) destdir=${1#*=}; shift ;;
    --no-build) build=no; shift ;;
    --from) from=${2:?--from needs a directory}; build=no; shift 2 ;;
    --from=*) from=${1#*=}; build=no; shift ;;
    -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install.sh: unknown argument $1 (see --help)" >&2; exit 64 ;;
  esac
done
case "$prefix" in /*) ;; *) echo "install.sh: --prefix must be an absolute path" >&2; exit 64 ;; esac
if [ -n "$destdir" ]; then
  mkdir -p "$destdir"
  destdir=$(cd "$destdir" && pwd)
elif [ "$(id -u)" != 0 ]; then
  echo "install.sh: a real install creates the mail owner account and the spool: run it as root, or stage with --destdir" >&2
  exit 77
fi

# Every program the package builds.
programs=$(sed -n 's/.*\.executable(name: "\([^"]*\)".*/\1/p' Package.swift)

if [ -n "$from" ]; then
  bindir=$from
else
  if [ "$build" = yes ]; then
    find_swift
    swift build -c release --static-swift-stdlib --disable-local-rpath
  fi
  bindir=.build/release
fi
for p in $programs; do
  [ -x "$bindir/$p" ] || { echo "install.sh: $bindir/$p is missing: build first (without --no-build)" >&2; exit 66; }
done

root=$destdir$prefix
etc=$destdir/etc/nestbox
doc=$root/share/doc/nestbox

install -d -m 0755 "$root/bin" "$root/share/man/man5" "$root/share/man/man8" "$doc" "$etc"
for p in $programs; do
  install -m 0755 "$bindir/$p" "$root/bin/$p"
done
for page in man/*.5 man/*.8; do
  install -m 0644 "$page" "$root/share/man/man${page##*.}/$(basename "$page")"
done

# Samples, with the programs' paths of this install.
for dir in postfix cron systemd; do
  install -d -m 0755 "$doc/$dir"
  for f in "$dir"/*; do
    sed "s|/usr/local/bin/|$prefix/bin/|g" "$f" > "$doc/$f.tmp"
    chmod 0644 "$doc/$f.tmp"
    mv "$doc/$f.tmp" "$doc/$f"
  done
done
install -m 0644 README.md "$doc/README.md"
# Dovecot's passdb for the SASL users (finds the programs in ../../bin from where it is).
install -d -m 0755 "$root/lib/nestbox"
install -m 0755 dovecot/checkpassword "$root/lib/nestbox/checkpassword"

# The configuration: never replaced.
if [ ! -e "$etc/nestbox.conf" ]; then
  install -m 0644 conf/nestbox.conf "$etc/nestbox.conf"
  echo "installed $etc/nestbox.conf"
elif cmp -s conf/nestbox.conf "$etc/nestbox.conf"; then
  :
else
  install -m 0644 conf/nestbox.conf "$etc/nestbox.conf.dist"
  echo "kept $etc/nestbox.conf; the sample of this version is $etc/nestbox.conf.dist"
fi

[ -n "$destdir" ] && exit 0

# A real install: the mail owner and the spool (the mail root the configuration names).
ensure_vmail
spool=$(sed -n 's/^partition-default:[[:space:]]*\([^[:space:]]*\).*/\1/p' "$etc/nestbox.conf" | tail -n 1)
spool=${spool:-/var/spool/nestbox}
if [ ! -d "$spool" ]; then
  install -d -o vmail -g vmail -m 0700 "$spool"
  echo "created $spool (vmail, 0700)"
elif [ "$(stat -c %U "$spool")" != vmail ]; then
  echo "note: $spool exists and belongs to $(stat -c %U "$spool"), not vmail: deliveries will fail until it does (chown vmail:vmail $spool)" >&2
fi
