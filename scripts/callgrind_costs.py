#!/usr/bin/env python3
"""Reads a callgrind output file (written with --compress-strings=no, event Ir only) and prints
one line: instructions attributed to nvme-core, the simulator, libc's memcpy/memmove/memset and
everything else (by the function that executed them, inlined code counting for the function it
was inlined into), then heap allocations (malloc, calloc, realloc, posix_memalign,
aligned_alloc, memalign calls) of the whole process and those made on behalf of nvme-core.

An allocation belongs to the nearest caller that is a crate's own function: calls from
library code (alloc::, core::, std::, __rust_alloc, ...) are handed up to their callers in
proportion to the number of calls each made, until they reach a function of nvme-core, of the
simulator, of the example, or the top of the stack.

Usage: callgrind_costs.py FILE  ->  "core sim mem other allocs core_allocs"
"""

import re
import sys
from collections import defaultdict

ALLOC = re.compile(r"^(malloc|calloc|realloc|posix_memalign|aligned_alloc|memalign)$")
MEM = re.compile(r"memcpy|memmove|memset")


def owner(fn):
    """Which crate a function belongs to, or None for library code."""
    if re.match(r"^<?nvme_core::", fn):
        return "core"
    if re.match(r"^<?sim_backend::", fn):
        return "sim"
    if re.match(r"^<?iopath::", fn):
        return "example"
    return None


def parse(path):
    self_cost = defaultdict(int)
    calls = defaultdict(lambda: defaultdict(int))  # caller -> callee -> count
    fn = cfn = None
    pending_call = False
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("fn="):
                fn = line[3:].strip()
                pending_call = False
            elif line.startswith("cfn="):
                cfn = line[4:].strip()
            elif line.startswith("calls="):
                calls[fn][cfn] += int(line[6:].split()[0])
                pending_call = True
            elif line[:1].isdigit() or line[:1] in "+-*":
                if fn is None:
                    continue
                if pending_call:
                    pending_call = False  # the inclusive cost of the call: not this fn's own
                    continue
                parts = line.split()
                if len(parts) >= 2:
                    self_cost[fn] += int(parts[-1])
    return self_cost, calls


def main():
    self_cost, calls = parse(sys.argv[1])
    buckets = defaultdict(int)
    for fn, n in self_cost.items():
        o = owner(fn)
        if o in ("core", "sim"):
            buckets[o] += n
        elif MEM.search(fn):
            buckets["mem"] += n
        else:
            buckets["other"] += n

    # Direct allocation calls per function, and calls into each function (for the hand-up).
    direct = defaultdict(int)
    into = defaultdict(int)
    for caller, callees in calls.items():
        for callee, n in callees.items():
            into[callee] += n
            if ALLOC.match(callee):
                direct[caller] += n
    total = sum(direct.values())

    # pending(G): allocations a library function G makes itself or through library callees.
    memo = {}

    def pending(g, stack):
        if g in memo:
            return memo[g]
        if g in stack:
            return 0.0
        stack.add(g)
        v = float(direct[g])
        for h, n in calls.get(g, {}).items():
            if owner(h) is None and not ALLOC.match(h) and into[h]:
                v += n / into[h] * pending(h, stack)
        stack.discard(g)
        memo[g] = v
        return v

    sys.setrecursionlimit(100000)
    core = sum(pending(fn, set()) for fn in list(calls) if owner(fn) == "core")
    print(
        buckets["core"],
        buckets["sim"],
        buckets["mem"],
        buckets["other"],
        total,
        round(core),
    )


if __name__ == "__main__":
    main()
