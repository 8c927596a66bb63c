#!/usr/bin/env bash
# Disassembles the aarch64 build of the I/O path and fails if the device barriers are missing:
# the SQ doorbell (Engine::ring) must be preceded by `dmb oshst` (a store barrier to the
# outer-shareable domain, as Linux's writel), the CQ head doorbell (Engine::reap) too, and a
# completion entry (CompQueue::pop) must be read after the phase check behind `dmb oshld`.
# Needs the aarch64 target and cross linker (`cargo xtask hil --arch aarch64 --install-deps`).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
cargo build --release -p sim-backend --example iopath --target aarch64-unknown-linux-gnu
asm=$(mktemp)
aarch64-linux-gnu-objdump -d --no-show-raw-insn -C \
  target/aarch64-unknown-linux-gnu/release/examples/iopath >"$asm"
fail=0
check() { # "fn-pattern[|fn-pattern...]" barrier: the functions the code may be inlined into
  local n
  n=$(awk -v pats="$1" -v bar="$2" '
    BEGIN { np = split(pats, p, "|") }
    /^[0-9a-f]+ <.*>:$/ { infn = 0; for (i = 1; i <= np; i++) if (index($0, p[i]) > 0) infn = 1 }
    infn && index($0, "dmb") && index($0, bar) { n++ }
    END { print n + 0 }' "$asm")
  if [ "$n" -eq 0 ]; then
    echo "MISSING: no 'dmb $2' in $1"; fail=1
  else
    echo "ok: $1 has $n 'dmb $2'"
  fi
}
# The release build inlines the I/O path (ring, completion processing, CompQueue::pop) into
# the queue pair's entry points and those into the benchmark's loop: each check names every
# function the code may land in.
io="nvme_core::io::IoQueuePair<P>::service>|nvme_core::io::IoQueuePair<P>::poll>|nvme_core::io::fixed::<impl nvme_core::io::IoQueuePair<P>>::poll_fixed>|iopath::main>|iopath::registered>|iopath::owned>"
# The SQ doorbell write (Engine::ring, inlined into IoQueuePair::ring in release builds).
check "nvme_core::engine::Engine<T>::ring>|nvme_core::io::IoQueuePair<P>::ring>|$io" oshst
# The CQ head doorbell write.
check "nvme_core::engine::Engine<T>::reap>|$io" oshst
# The completion entry read after the phase check (CompQueue::pop, inlined into Engine::reap).
check "nvme_core::queue::CompQueue::pop>|nvme_core::engine::Engine<T>::reap>|$io" oshld
rm -f "$asm"
exit $fail
