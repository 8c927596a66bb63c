#!/usr/bin/env bash
# Instructions per I/O, attributed to nvme-core, the simulator, memcpy/memset and the rest,
# from callgrind (instructions are deterministic where wall-clock time on a shared machine is
# not). Runs the iopath example twice (20,000 and 60,000 I/Os) and divides the difference, so
# bring-up and teardown cancel out.
#   scripts/iocost.sh [read|write] [QD]      e.g. scripts/iocost.sh read 128
set -euo pipefail
cd "$(dirname "$0")/.."
op=${1:-read}; qd=${2:-1}
cargo build --release -q -p sim-backend --example iopath
bin=target/release/examples/iopath
tmp=$(mktemp -d)
run() {
  valgrind --tool=callgrind --callgrind-out-file="$tmp/cg.$1" "$bin" "$op" "$qd" "$1" >/dev/null 2>&1
  callgrind_annotate --auto=no --threshold=100 "$tmp/cg.$1" | awk '
    /^ *[0-9,]+ .*:/ {
      n = $1; gsub(",", "", n); f = $0
      sub(/^ *[0-9,]+ *\([ 0-9.%]*\) */, "", f); sub(/ \[.*$/, "", f); fn = f; sub(/^[^:]*:/, "", fn)
      if (fn ~ /^(<)?nvme_core::/) c += n
      else if (fn ~ /^(<)?sim_backend::/) s += n
      else if (fn ~ /memcpy|memmove|memset/) m += n
      else o += n
    }
    END { printf "%.0f %.0f %.0f %.0f\n", c, s, m, o }'
}
a=$(run 20000); b=$(run 60000)
echo "$a $b" | awk -v op="$op" -v qd="$qd" '{
  printf "%s QD%s instructions per I/O: nvme-core %.0f, simulator %.0f, memcpy/memset %.0f, other %.0f\n",
    op, qd, ($5-$1)/40000, ($6-$2)/40000, ($7-$3)/40000, ($8-$4)/40000 }'
rm -rf "$tmp"
