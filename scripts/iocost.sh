#!/usr/bin/env bash
# Instructions per I/O, attributed to nvme-core, the simulator, memcpy/memset and the rest,
# from callgrind (instructions are deterministic where wall-clock time on a shared machine is
# not). Runs the iopath example twice (20,000 and 60,000 I/Os) and divides the difference, so
# bring-up and teardown cancel out. Also counts heap allocations per I/O of the whole process.
#   scripts/iocost.sh [read|write] [QD]      e.g. scripts/iocost.sh read 128
# IOPATH_TRANSFER=prp|sgl picks the data pointer (default: SGLs, which the simulator offers).
set -euo pipefail
cd "$(dirname "$0")/.."
op=${1:-read}; qd=${2:-1}
[ -n "${IOPATH_BIN:-}" ] || cargo build --release -q -p sim-backend --example iopath
bin=${IOPATH_BIN:-target/release/examples/iopath}
tmp=$(mktemp -d)
run() {
  valgrind --tool=callgrind --compress-strings=no --callgrind-out-file="$tmp/cg.$1" \
    "$bin" "$op" "$qd" "$1" >/dev/null 2>&1
  callgrind_annotate --auto=no --threshold=100 "$tmp/cg.$1" | awk '
    /^ *[0-9,]+ .*:/ {
      n = $1; gsub(",", "", n); f = $0
      sub(/^ *[0-9,]+ *\([ 0-9.%]*\) */, "", f); sub(/ \[.*$/, "", f); fn = f; sub(/^[^:]*:/, "", fn)
      if (fn ~ /^(<)?nvme_core::/) c += n
      else if (fn ~ /^(<)?sim_backend::/) s += n
      else if (fn ~ /memcpy|memmove|memset/) m += n
      else o += n
    }
    END { printf "%.0f %.0f %.0f %.0f ", c, s, m, o }'
  # Heap allocations of the whole process (malloc, calloc, realloc, posix_memalign calls);
  # attribute them with `callgrind_annotate --tree=caller` when they are not zero.
  awk '
    /^cfn=/ { callee = $0 }
    /^calls=/ {
      if (callee ~ /^cfn=(malloc|calloc|realloc|posix_memalign)([ @]|$)/) { split($1, a, "="); n += a[2] }
    }
    END { printf "%.0f\n", n }' "$tmp/cg.$1"
}
a=$(run 20000); b=$(run 60000)
echo "$a $b" | awk -v op="$op" -v qd="$qd" '{
  printf "%s QD%s instructions per I/O: nvme-core %.0f, simulator %.0f, memcpy/memset %.0f, other %.0f\n",
    op, qd, ($6-$1)/40000, ($7-$2)/40000, ($8-$3)/40000, ($9-$4)/40000
  printf "%s QD%s heap allocations per I/O (whole process): %.2f\n", op, qd, ($10-$5)/40000 }'
rm -rf "$tmp"
