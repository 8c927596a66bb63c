#!/usr/bin/env bash
# Instructions per 4 KiB I/O, attributed to nvme-core, the simulator, libc's
# memcpy/memmove/memset and the rest, from callgrind (instructions are deterministic where
# wall-clock time on a shared machine is not), and heap allocations per I/O (the whole process,
# and those made on behalf of nvme-core). Each workload runs the iopath example twice (20,000
# and 60,000 I/Os) and divides the difference, so bring-up and teardown cancel out.
#   scripts/iocost.sh                          read and write at QD1 and QD128, reads with
#                                              shadow doorbells, and registered buffers: one table
#   scripts/iocost.sh read|write QD [shadow|fixed]   one workload (fixed: registered
#                                              buffers, IoQueuePair::submit_read_fixed)
# Shadow doorbells are off unless asked for: the inline simulator pays for reading them from
# memory where a register write costs it a function call (on an emulated controller a register
# write is a VM exit, which they save).
# IOPATH_BIN=path measures another build of the example.
# IOPATH_TRANSFER=prp|sgl picks the data pointer (default: SGLs, which the simulator offers).
set -euo pipefail
cd "$(dirname "$0")/.."

need() { # need COMMAND PACKAGE
  command -v "$1" >/dev/null && return
  echo "iocost: $1 not found; installing $2 with apt-get" >&2
  if command -v apt-get >/dev/null; then
    if [ "$(id -u)" = 0 ]; then apt-get install -y -q "$2" >&2; else sudo apt-get install -y -q "$2" >&2; fi || true
  fi
  command -v "$1" >/dev/null || {
    echo "iocost: $1 is required (package $2); install it and run again" >&2
    exit 1
  }
}
need valgrind valgrind
need python3 python3

[ -n "${IOPATH_BIN:-}" ] || cargo build --release -q -p sim-backend --example iopath
bin=${IOPATH_BIN:-target/release/examples/iopath}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# run OP QD IOS [shadow] -> "core sim mem other allocs core_allocs"
run() {
  local out="$tmp/cg.$1.$2.$3.${4:-}"
  if ! valgrind --tool=callgrind --dump-instr=yes --compress-pos=no --compress-strings=no \
    --callgrind-out-file="$out" \
    "$bin" "$1" "$2" "$3" ${4:+"$4"} >"$tmp/log" 2>&1; then
    echo "iocost: $bin $1 $2 $3 ${4:-} failed under valgrind:" >&2
    tail -20 "$tmp/log" >&2
    exit 1
  fi
  python3 scripts/callgrind_costs.py "$out" "$bin"
}

# measure OP QD [shadow] -> one table row
measure() {
  local a b
  a=$(run "$1" "$2" 20000 ${3:+"$3"})
  b=$(run "$1" "$2" 60000 ${3:+"$3"})
  local label=""
  case "${3:-}" in
    shadow) label=", shadow doorbells" ;;
    fixed) label=", registered buffers" ;;
  esac
  echo "$a $b" | awk -v op="$1" -v qd="$2" -v sh="$label" '
    function per(i) { return ($(i + 6) - $i) / 40000 }
    { printf "| %s QD%s%s | %.0f | %.0f | %.0f | %.0f | %.2f | %.2f |\n",
        op, qd, sh, per(1), per(2), per(3), per(4), per(5), per(6) }'
}

header() {
  echo "| workload | nvme-core | simulator | memcpy/memmove/memset | other | allocations (process) | allocations (nvme-core) |"
  echo "|---|---|---|---|---|---|---|"
}

if [ $# -eq 0 ]; then
  echo "Instructions and heap allocations per 4 KiB I/O (inline simulator, polled, batched doorbells):"
  header
  for w in "read 1" "read 128" "write 1" "write 128" "read 1 shadow" "read 128 shadow" \
    "read 1 fixed" "read 128 fixed" "write 1 fixed" "write 128 fixed"; do
    # shellcheck disable=SC2086
    measure $w
  done
else
  header
  measure "${1:-read}" "${2:-1}" ${3:+"$3"}
fi
