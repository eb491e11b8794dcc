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
apt_install postfix dovecot-core dovecot-imapd swaks groff-base python3 time strace jq python3-prometheus-client libsasl2-dev libdb5.3-dev sasl2-bin libsasl2-modules dpkg-dev
ensure_vmail
swift build --build-tests
# The release build scripts/install.sh and scripts/deb.sh install (InstallTests checks it).
swift build -c release --static-swift-stdlib --disable-local-rpath
# XCTest only (the suite has no Swift Testing tests); the summary line at the end counts the
# XCTest cases that ran.
log=$(mktemp)
trap 'rm -f "$log" "$log.status"' EXIT
set +e
{ swift test --skip-build --disable-swift-testing "$@"; echo $? > "$log.status"; } 2>&1 | tee "$log"
status=$(cat "$log.status")
set -e
passed=$(grep -c "^Test Case '.*' passed" "$log" || true)
failed=$(grep -c "^Test Case '.*' failed" "$log" || true)
echo "$passed passed, $failed failed"
[ "$status" -eq 0 ] && [ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
