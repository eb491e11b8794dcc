#!/bin/sh
# Builds a Debian package from the tree: nestbox_<version>_<arch>.deb in the current directory
# (or --out DIR), staged with scripts/install.sh --prefix /usr. Its dependencies are computed
# from the programs' shared libraries (dpkg-shlibdeps); /etc/nestbox/nestbox.conf is a conffile;
# the postinst creates the mail owner account (vmail) and the spool when they are missing.
#
#   scripts/deb.sh [--out DIR] [--no-build] [--from DIR]     (--no-build, --from: as install.sh)
#
# Install with: apt install ./nestbox_<version>_<arch>.deb
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
out=$(pwd)
pass=
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=${2:?--out needs a directory}; shift 2 ;;
    --no-build) pass="$pass --no-build"; shift ;;
    --from) pass="$pass --from $(cd "${2:?--from needs a directory}" && pwd)"; shift 2 ;;
    -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "deb.sh: unknown argument $1 (see --help)" >&2; exit 64 ;;
  esac
done
for tool in dpkg-deb dpkg-shlibdeps; do
  command -v $tool >/dev/null 2>&1 || { echo "deb.sh: $tool is needed: apt-get install -y dpkg-dev" >&2; exit 69; }
done
out=$(mkdir -p "$out" && cd "$out" && pwd)

work=$(mktemp -d /tmp/nestbox-deb.XXXXXX)
trap 'rm -rf "$work"' EXIT
stage=$work/nestbox
# shellcheck disable=SC2086
"$top/scripts/install.sh" --prefix /usr --destdir "$stage" $pass >/dev/null

# Debian ships programs without their symbol tables.
strip "$stage"/usr/bin/*

version=$("$stage/usr/bin/nestbox-deliver" --version | sed -n 's/^nestbox-deliver \([^ ]*\).*/\1/p')
[ -n "$version" ] || { echo "deb.sh: cannot read the version from nestbox-deliver --version" >&2; exit 70; }
arch=$(dpkg --print-architecture)

# Dependencies: dpkg-shlibdeps reads debian/control from the current directory.
mkdir -p "$work/src/debian"
printf 'Source: nestbox\n\nPackage: nestbox\nArchitecture: any\n' > "$work/src/debian/control"
depends=$(cd "$work/src" && dpkg-shlibdeps -O "$stage"/usr/bin/* 2>"$work/shlibdeps.err" | sed -n 's/^shlibs:Depends=//p') || {
  cat "$work/shlibdeps.err" >&2; exit 70; }
[ -n "$depends" ] || { echo "deb.sh: dpkg-shlibdeps found no dependencies" >&2; exit 70; }
# Berkeley DB is loaded at run time (dlopen: the SASL database), so no program names it.
case ", $depends," in *", libdb5.3"*) ;; *) depends="$depends, libdb5.3" ;; esac

mkdir -p "$stage/DEBIAN"
cat > "$stage/DEBIAN/control" <<EOF
Package: nestbox
Version: $version
Architecture: $arch
Maintainer: Nestbox <postmaster@localhost>
Section: mail
Priority: optional
Installed-Size: $(du -sk "$stage/usr" | cut -f1)
Depends: $depends, passwd
Recommends: postfix, libsasl2-modules
Suggests: dovecot-imapd, sasl2-bin
Description: local delivery agent for Postfix, Maildir++ store shared with Dovecot
 nestbox-deliver (pipe transport) and nestbox-lmtpd (LMTP) store mail in the
 Maildir++ format Dovecot reads; nestbox-reconstruct, nestbox-purge,
 nestbox-quota and nestbox-passwd maintain the mailboxes, quotas and SASL users.
 Command lines and configuration keys follow Cyrus IMAP's.
EOF
echo /etc/nestbox/nestbox.conf > "$stage/DEBIAN/conffiles"

cat > "$stage/DEBIAN/postinst" <<'EOF'
#!/bin/sh
# The mail owner account and the spool, when missing (an existing account is kept).
set -e
if [ "$1" = configure ]; then
  if ! getent passwd vmail >/dev/null; then
    if getent group vmail >/dev/null; then group="-g vmail"; else group="-U"; fi
    useradd --system $group --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin vmail
  fi
  spool=$(sed -n 's/^partition-default:[[:space:]]*\([^[:space:]]*\).*/\1/p' /etc/nestbox/nestbox.conf 2>/dev/null | tail -n 1)
  spool=${spool:-/var/spool/nestbox}
  if [ ! -d "$spool" ]; then
    install -d -o vmail -g vmail -m 0700 "$spool"
  fi
fi
exit 0
EOF
chmod 0755 "$stage/DEBIAN/postinst"

deb="$out/nestbox_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zgzip --build "$stage" "$deb" >/dev/null
echo "$deb"
