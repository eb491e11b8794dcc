#!/bin/bash
# The disk's limit for a safe delivery, measured now: a small C program (bench/limit.c, built
# at run time with the system C compiler into the work directory) does for each message only
# what a delivery that survives a power cut must do: create a file in tmp/, write 4 KiB, fsync
# it, rename it into new/, fsync new/. Nothing else (no parsing, no index, no lock). Prints
# messages/s for three loads:
#   1 writer          1000 messages into one Maildir           (matches bench/lmtp.sh row 1, 4)
#   4 writers, 1 dir  2000 messages, 4 threads, one Maildir    (matches row 2)
#   4 writers, 4 dirs 2000 messages, 4 threads, one Maildir each (matches row 3)
#
#   bench/limit.sh [--dir DIR] [--rounds N]
#
#   --dir DIR   measure on the file system of DIR (a fresh subdirectory is made in it and
#               removed after); default: a new temporary directory /tmp/nestbox-limit.XXXXXX,
#               the file system bench/lmtp.sh's servers write to.
#   --rounds N  measure each load N times (default 1) and print the median.
#
# Each figure starts from empty directories after `sync` (so it does not pay for earlier
# writeback); after it the files in new/ are counted (a wrong count is an error) and removed.
# Figures on shared virtual disks move by 2-3x from minute to minute: a server's throughput means
# something only as a fraction of the limit measured in the same run (bench/lmtp.sh prints the
# limit before and after its rows by sourcing this file).
#
# Sourced (`. bench/limit.sh`), it only defines:
#   limit_build WORKDIR        compile bench/limit.c into WORKDIR/limit (once)
#   limit_measure WORKDIR      measure the three loads once; sets LIMIT_1 LIMIT_4_1DIR LIMIT_4_4DIR
#                              (messages/s), returns non-zero on failure
#   limit_describe             "1 writer X, 4 writers 1 dir Y, 4 writers 4 dirs Z msg/s"

limit_src=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/limit.c
LIMIT_SIZE=4096

limit_build() { # workdir
  [ -x "$1/limit" ] && return 0
  [ -x /usr/bin/cc ] || { echo "limit: /usr/bin/cc not found (apt-get install -y gcc)" >&2; return 69; }
  /usr/bin/cc -O2 -pthread -o "$1/limit" "$limit_src" || { echo "limit: cc failed on $limit_src" >&2; return 1; }
}

# limit_one workdir writers dirs messages: one figure, messages/s on stdout
limit_one() {
  local d=$1/limit-run out got
  rm -rf "$d"
  sync
  out=$("$1/limit" "$d" "$2" "$3" "$4" "$LIMIT_SIZE") || { rm -rf "$d"; return 1; }
  got=$(find "$d" -mindepth 3 -maxdepth 3 -path '*/new/*' -type f | wc -l)
  # Kept until the work directory goes, not removed now: on ext4 without a journal every inode
  # freed in the last 60-360 s is skipped (and its inode-table block read) by each file creation
  # that follows, so thousands of files removed here would slow whatever is timed next.
  mv "$d" "$1/limit-kept.$$.$RANDOM.$RANDOM"
  [ "$got" -eq "$4" ] || { echo "limit: $got files in new/, expected $4" >&2; return 1; }
  echo "$out" | awk '{ print $3 }'
}

limit_measure() { # workdir
  limit_build "$1" || return $?
  LIMIT_1=$(limit_one "$1" 1 1 1000) || return 1
  LIMIT_4_1DIR=$(limit_one "$1" 4 1 2000) || return 1
  LIMIT_4_4DIR=$(limit_one "$1" 4 4 2000) || return 1
}

limit_describe() {
  echo "1 writer $LIMIT_1, 4 writers 1 dir $LIMIT_4_1DIR, 4 writers 4 dirs $LIMIT_4_4DIR msg/s"
}

# ---------------------------------------------------------------- standalone
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -u
  dir="" rounds=1
  while [ $# -gt 0 ]; do
    case $1 in
      --dir) shift; dir=${1:-}; [ -d "$dir" ] || { echo "--dir needs an existing directory" >&2; exit 64; } ;;
      --rounds) shift; rounds=${1:-}; case $rounds in ''|*[!0-9]*|0) echo "--rounds needs a number >= 1" >&2; exit 64 ;; esac ;;
      -h|--help) sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
      *) echo "unknown option: $1 (see --help)" >&2; exit 64 ;;
    esac
    shift
  done
  if [ -n "$dir" ]; then
    work=$(mktemp -d "$dir/nestbox-limit.XXXXXX") || exit 1
  else
    work=$(mktemp -d /tmp/nestbox-limit.XXXXXX) || exit 1
  fi
  trap 'rm -rf "$work"' EXIT
  a1="" a41="" a44=""
  for ((r = 1; r <= rounds; r++)); do
    limit_measure "$work" || exit 1
    a1="$a1 $LIMIT_1"; a41="$a41 $LIMIT_4_1DIR"; a44="$a44 $LIMIT_4_4DIR"
    [ "$rounds" -gt 1 ] && echo "  round $r: $(limit_describe)" >&2
  done
  med() { echo $1 | tr ' ' '\n' | sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else printf "%.1f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
  fs=$(df -PT "$work" | awk 'NR == 2 { print $2 " on " $1 }')
  echo "Disk limit of a safe delivery (create in tmp/, write $LIMIT_SIZE bytes, fsync, rename into new/, fsync new/)"
  echo "$(dirname "$work"): $fs; $(nproc) cores, $(uname -r); median of $rounds round(s)"
  printf '%-36s %10s\n' load msg/s
  printf '%-36s %10s\n' "1 writer, 1000 messages" "$(med "$a1")"
  printf '%-36s %10s\n' "4 writers, 1 directory, 2000 messages" "$(med "$a41")"
  printf '%-36s %10s\n' "4 writers, 4 directories, 2000 msgs" "$(med "$a44")"
fi
