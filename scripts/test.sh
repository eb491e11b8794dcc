#!/bin/sh
# The test command: installs the real peers the tests drive (Postfix, Dovecot's doveadm,
# swaks) if they are missing, builds, and runs the whole suite: unit tests, end-to-end tests of
# the built programs, Dovecot interoperability and Postfix end to end. Run it as root (the
# tests start Postfix instances, mount a small tmpfs and switch to the mail owner).
#
#   ./scripts/test.sh [swift test arguments, e.g. --filter DeliverTests]
set -eu
cd "$(dirname "$0")/.."
. scripts/common.sh
find_swift
apt_install postfix dovecot-core dovecot-imapd swaks groff-base python3 time
ensure_vmail
swift build --build-tests
swift test --skip-build "$@"
