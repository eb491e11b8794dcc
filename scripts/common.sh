# Shared by demo.sh and test.sh: find Swift, install Debian packages that are missing.

# Swift: on PATH, or the usual toolchain locations.
find_swift() {
  command -v swift >/dev/null 2>&1 && return 0
  for d in /opt/swift/usr/bin /usr/share/swift/usr/bin /usr/local/swift/usr/bin; do
    if [ -x "$d/swift" ]; then PATH="$d:$PATH"; export PATH; return 0; fi
  done
  echo "Swift 6 is needed: install a toolchain from https://www.swift.org/install/linux/ (Debian 12)" >&2
  echo "and put its usr/bin on PATH." >&2
  exit 69
}

# apt_install PKG...: installs the packages that are not installed yet (needs root).
apt_install() {
  missing=""
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
  done
  [ -z "$missing" ] && return 0
  if [ "$(id -u)" != 0 ]; then
    echo "missing Debian packages:$missing (run as root, or: sudo apt-get install -y$missing)" >&2
    exit 69
  fi
  echo "installing:$missing" >&2
  # Postfix asks how to configure itself: the tests run their own instances.
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q $missing >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q $missing; }
}

# The mail owner account (a system account without login, group vmail), when run as root and
# missing: an existing account is kept, an existing group vmail is used.
ensure_vmail() {
  [ "$(id -u)" = 0 ] || return 0
  id vmail >/dev/null 2>&1 && return 0
  if getent group vmail >/dev/null; then group="-g vmail"; else group="-U"; fi
  useradd --system $group --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin vmail
}
