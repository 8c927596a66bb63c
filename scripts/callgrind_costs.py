#!/usr/bin/env python3
"""Reads a callgrind output file (written with --compress-strings=no, event Ir only) and prints
one line: instructions attributed to nvme-core, the simulator, libc's memcpy/memmove/memset and
everything else, then heap allocations (malloc, calloc, realloc, posix_memalign,
aligned_alloc, memalign calls) of the whole process and those made on behalf of nvme-core.

An allocation belongs to the nearest caller that is a crate's own function: calls from
library code (alloc::, core::, std::, __rust_alloc, ...) are handed up to their callers in
proportion to the number of calls each made, until they reach a function of nvme-core, of the
simulator, of the example, or the top of the stack.

Instructions go by the source file of the line that executed them (from the debug info, so a
function of nvme-core inlined into the simulator or into the example still counts for
nvme-core). Lines of library code (core, alloc, std, dependencies) and of nvme-core's spec
types (nvme-core/src/spec/, the wire format the simulator shares) go by their inlining chain
when the output has instruction addresses (callgrind --dump-instr=yes) and BINARY is given:
`addr2line -i` names the functions each such instruction was inlined through, and the
innermost one written in a crate's own file decides (slice indexing inlined into a core
function that was inlined into the benchmark loop is the core's; the loop's own indexing is
the benchmark's, counted as "other"). Without addresses they count for the crate whose
function they were inlined into, and those inlined into the benchmark's own loop count for
nvme-core (an overestimate of the core). A spec function that was not inlined hands its cost
up to its callers in proportion to their calls (the simulator decoding a command with the
core's spec types is the simulator's work).

Usage: callgrind_costs.py FILE [BINARY]  ->  "core sim mem other allocs core_allocs"
"""

import re
import subprocess
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


def is_spec(fn):
    return re.match(r"^<?nvme_core::spec::", fn) is not None


def file_owner(path):
    """Which crate a source file belongs to, or None for library code, the shared spec types
    and unknown files."""
    if "/nvme-core/src/spec/" in path:
        return None
    if "/nvme-core/src/" in path:
        return "core"
    if "/sim-backend/src/" in path:
        return "sim"
    if "/examples/" in path:
        return "example"
    return None


def inline_owners(binary, addrs):
    """For each address of `binary`, the crate of the innermost function in its inlining chain
    that is written in a crate's own file ("core", "sim", "example"), or None. Empty if
    addr2line is missing or fails (the caller then falls back to function-level rules)."""
    owners = {}
    if not addrs:
        return owners
    try:
        out = subprocess.run(
            ["addr2line", "-i", "-a", "-e", binary],
            input="\n".join(f"{a:#x}" for a in addrs),
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return owners
    cur = None
    for line in out.splitlines():
        if line.startswith("0x"):
            cur = int(line, 16)
            owners[cur] = None
            continue
        if cur is None or owners[cur] is not None:
            continue
        o = file_owner(line.rsplit(":", 1)[0])
        if o is not None:
            owners[cur] = o
    return owners


def parse(path, binary=None):
    spec_cost = defaultdict(int)
    by_owner = defaultdict(int)
    calls = defaultdict(lambda: defaultdict(int))  # caller -> callee -> count
    # Library and spec lines of `binary`, by address, for inline-chain attribution:
    # address -> [cost, function].
    unresolved = defaultdict(lambda: [0, None])
    fn = cfn = None
    fl = cur = ob = ""
    pending_call = False
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("ob="):
                ob = line[3:].strip()
            elif line.startswith("fl="):
                fl = cur = line[3:].strip()
            elif line.startswith("fi=") or line.startswith("fe="):
                cur = line[3:].strip()
            elif line.startswith("fn="):
                fn = line[3:].strip()
                cur = fl
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
                    n = int(parts[-1])
                    if (
                        binary
                        and parts[0].startswith("0x")
                        and file_owner(cur) is None
                        and ob.endswith(binary_name(binary))
                    ):
                        u = unresolved[int(parts[0], 16)]
                        u[0] += n
                        u[1] = fn
                        continue
                    if is_spec(fn):
                        spec_cost[fn] += n
                        continue
                    o = file_owner(cur) or owner(fn)
                    if o == "example" and file_owner(cur) is None:
                        # Library code inlined into the benchmark loop: most of it comes
                        # from nvme-core functions inlined there (moves of requests and
                        # completions, slice indexing), and callgrind cannot tell it from
                        # the loop's own; it counts against the core (an overestimate).
                        o = "core"
                    charge(by_owner, o, fn, n)
    owners = inline_owners(binary, sorted(unresolved)) if unresolved else {}
    for addr, (n, fn) in unresolved.items():
        o = owners.get(addr)
        if o is None and is_spec(fn):
            spec_cost[fn] += n  # a spec function not inlined: handed up to its callers
            continue
        if addr not in owners:  # no addr2line: the function-level rules
            o = owner(fn)
            if o == "example":
                o = "core"
        charge(by_owner, o or owner(fn), fn, n)
    return by_owner, calls, spec_cost


def binary_name(binary):
    return "/" + binary.rsplit("/", 1)[-1]


def charge(by_owner, o, fn, n):
    if o in ("core", "sim"):
        by_owner[o] += n
    elif MEM.search(fn):
        by_owner["mem"] += n
    else:
        by_owner["other"] += n


def main():
    buckets, calls, spec_cost = parse(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)

    # Direct allocation calls per function, and calls into each function (for the hand-up).
    direct = defaultdict(int)
    into = defaultdict(int)
    for caller, callees in calls.items():
        for callee, n in callees.items():
            into[callee] += n
            if ALLOC.match(callee):
                direct[caller] += n
    total = sum(direct.values())

    sys.setrecursionlimit(100000)

    def handed_up(own, follow):
        """f(G): own[G] plus, for every callee H of G that `follow` accepts, H's f in
        proportion to the share of H's calls that G made (cycles count once)."""
        memo = {}

        def f(g, stack):
            if g in memo:
                return memo[g]
            if g in stack:
                return 0.0
            stack.add(g)
            v = float(own[g])
            for h, n in calls.get(g, {}).items():
                if follow(h) and into[h]:
                    v += n / into[h] * f(h, stack)
            stack.discard(g)
            memo[g] = v
            return v

        return f

    # pending(G): allocations a library function G makes itself or through library callees.
    pending = handed_up(direct, lambda h: owner(h) is None and not ALLOC.match(h))
    # Spec functions that were not inlined: their cost goes to the callers that are not.
    spec_pending = handed_up(spec_cost, is_spec)

    for fn, callees in list(calls.items()):
        if is_spec(fn):
            continue
        share = sum(n / into[h] * spec_pending(h, set()) for h, n in callees.items() if is_spec(h) and into[h])
        if share:
            o = owner(fn)
            buckets[o if o in ("core", "sim") else "other"] += share

    core = sum(pending(fn, set()) for fn in list(calls) if owner(fn) == "core")
    print(
        round(buckets["core"]),
        round(buckets["sim"]),
        round(buckets["mem"]),
        round(buckets["other"]),
        total,
        round(core),
    )


if __name__ == "__main__":
    main()
