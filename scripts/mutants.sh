#!/usr/bin/env bash
# Sharpness of the conformance suite: deliberate one-line defects of the simulator.
#
# Each mutant is one `sed` substitution in a command handler, the queue logic or the
# interrupt logic of `sim-backend`. The script copies the working tree to a scratch directory
# (the working tree itself is never modified), applies one mutant at a time there, builds the
# conformance harness against the broken simulator, runs the simulator shapes and records
# which cases fail. A mutant no case catches is a hole in the suite.
#
# Usage:
#   scripts/mutants.sh            # every mutant
#   scripts/mutants.sh M03 M17    # only these
#   scripts/mutants.sh --list     # list the mutants
#
# Environment:
#   MUTANTS_OUT     where the scratch copy, logs and the table go (default target/mutants)
#   MUTANTS_SHAPES  simulator shapes to run (NVME_TEST_SIM_SHAPES; default msix,polled)
#   MUTANTS_TIMEOUT seconds per mutant run (default 900)
#   MUTANTS_TARGET  cargo's target directory for the mutated builds (default $MUTANTS_OUT/target;
#                   never the working tree's own)
#
# Output: `$MUTANTS_OUT/table.md` (mutant, defect, cases that catch it), one log per mutant;
# a full run also copies the table to conformance-tests/mutants.md, which the generated
# docs/conformance.md includes.
# Exit status: 0 when the unmutated simulator passes and every mutant is caught.
set -euo pipefail

repo=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
out=${MUTANTS_OUT:-$repo/target/mutants}
shapes=${MUTANTS_SHAPES:-msix,polled}
limit=${MUTANTS_TIMEOUT:-900}

ids=() files=() progs=() descs=()
m() { ids+=("$1"); files+=("$2"); progs+=("$3"); descs+=("$4"); }

C=sim-backend/src/ctrl/mod.rs
A=sim-backend/src/ctrl/admin.rs
N=sim-backend/src/ctrl/nvm.rs
P=sim-backend/src/prp.rs

m M01 $C 's#cq.phase = !cq.phase;#cq.phase = cq.phase;#' \
  "phase tag not inverted when a CQ wraps (§4.2.4)"
m M02 $C 's#let sqhd = sq.as_ref().map_or(0, |s| s.head as u16);#let sqhd = sq.as_ref().map_or(0, |_s| 0u16);#' \
  "SQ Head Pointer always reported as 0 (§4.2.1 SQHD)"
m M03 $C 's#self.pending_irqs.push(iv);#let _ = iv;#' \
  "no interrupt raised for I/O or admin completions (§3.3 / PCIe MSI-X)"
m M04 $C 's#            if ien {#            if ien || iv == iv {#' \
  "interrupts raised for a CQ created with IEN = 0 (§5.2.1)"
m M05 $C 's#self.pending_irqs.push(iv);#self.pending_irqs.push(0);#' \
  "every completion signals vector 0 instead of its CQ's vector (§5.2.1 IV)"
m M06 $N 's#let cached = self.feat.vwc \&\& !fua;#let cached = self.feat.vwc;#' \
  "FUA ignored: a FUA write stays in the volatile cache (NVM §3.3.6)"
m M07 $N 's#if self.namespaces\[i\].flush().is_err() {#if false {#' \
  "Flush is a no-op (NVMe Base §7.1)"
m M08 $N 's#        if ad {#        if false {#' \
  "Dataset Management deallocate ignored (NVM §3.3.3)"
m M09 $P 's#segs.push((prp1, first));#segs.push((prp1 \& !(ps64 - 1), first));#' \
  "PRP1 offset ignored (§4.3.1)"
m M10 $C 's#let cqe = Completion::new(p.dw0, p.dw1, sqhd, p.sqid, p.cid, phase, p.status);#let cqe = Completion::new(p.dw0, p.dw1, sqhd, p.sqid, p.cid \& 0xFF, phase, p.status);#' \
  "CID echoed truncated to its low byte (§4.2.1)"
m M11 $C 's#let cqe = Completion::new(p.dw0, p.dw1, sqhd, p.sqid, p.cid, phase, p.status);#let cqe = Completion::new(p.dw0, p.dw1, sqhd, cqid, p.cid, phase, p.status);#' \
  "SQ Identifier reports the CQ's ID (§4.2.1 SQID)"
m M12 $A 's#mdts: self.cfg.mdts,#mdts: self.cfg.mdts + 1,#' \
  "Identify MDTS advertises twice what the controller accepts (§5.1.13.2.1)"
m M13 $N 's#return fail(Status::generic(generic::LBA_OUT_OF_RANGE, true), Some(slba));#return fail(Status::generic(generic::INVALID_FIELD, true), Some(slba));#' \
  "wrong status: LBA out of range reported as Invalid Field (NVM §3.3)"
m M14 $A 's#Done::err(Status::specific(sc, true))#Done::err(Status::specific(sc, false))#' \
  "command specific errors without Do Not Retry (§4.2.3)"
m M15 $A '0,/qsize_z > self.cap.mqes_z()/s##qsize_z > self.cap.mqes_z() + 1#' \
  "Create I/O CQ accepts QSIZE = CAP.MQES + 1 (§5.2.1)"
m M16 $N 's#if self.namespaces\[i\].zero(slba, nlb, deac, cached).is_err() {#if false {#' \
  "Write Zeroes is a no-op (NVM §3.3.8)"
m M17 $N 's#if host != data {#if false {#' \
  "Compare never reports a miscompare (NVM §3.3.1)"
m M18 $C 's#sq.head = (sq.head + 1) % sq.size;#sq.head = (sq.head + 1) % (sq.size + 1);#' \
  "SQ head does not wrap at the queue size (§4.1.1)"
m M19 $C 's#            if cq.full() {#            if false {#' \
  "completions overwrite unconsumed CQ entries when the CQ is full (§4.2.4)"
m M20 $C 's#self.aer.masked\[usize::from(ev.event_type \& 7)\] = true;#let _ = ev.event_type;#' \
  "an event type is not masked after it was reported (§5.1.2)"
m M21 $A '0,/qid == 0 || qid > self.granted.1/s##qid == 0 || qid > self.cfg.max_io_queues#' \
  "Create I/O CQ accepts QIDs above the Number of Queues allocation (§5.1.25.1.7)"
m M22 $A 's#let start = off as usize;#let start = 0usize;#' \
  "Get Log Page ignores the log page offset (§5.1.12)"
m M23 $A 's#self.feat.vwc = wce;#self.feat.vwc = true;#' \
  "Volatile Write Cache cannot be disabled (§5.1.25.1.6)"
m M24 $A 's#        Done::ok(1)#        Done::ok(0)#' \
  "Abort reports every command aborted (DW0 bit 0 = 0), even one that already completed (§5.1.1)"
m M25 $A 's#filter(|\&id| id > nsid)#filter(|\&id| id >= nsid)#' \
  "active namespace list includes the starting NSID (§5.1.13.2.2)"
m M26 $A 's#if ien \&\& iv >= self.cfg.msix_vectors {#if false {#' \
  "Create I/O CQ accepts an interrupt vector the function lacks (§5.2.1)"
m M27 $A 's#if self.namespaces\[i\].format(lbaf).is_err() {#if false {#' \
  "Format NVM succeeds without changing the format or erasing (§5.1.10)"
m M28 $N 's#let cached = self.feat.vwc \&\& !fua;#let cached = !fua;#' \
  "writes cached even with the volatile write cache disabled (§5.1.25.1.6)"

# Defects the spec gives no way to observe: the reason replaces a catching case.
declare -A unobservable=(
    [M08]="unobservable: deallocation is advisory (NVM §3.3.3: the controller may deallocate), so reading the old data back is legal; IO-08, IO-16 check that what comes back is either the data or what DLFEAT promises"
)

if [[ ${1:-} == --list ]]; then
    for i in "${!ids[@]}"; do printf '%s  %-28s %s\n' "${ids[$i]}" "${files[$i]#sim-backend/src/}" "${descs[$i]}"; done
    exit 0
fi
want=("$@")

mkdir -p "$out"
src=$out/src
rm -rf "$src"
mkdir -p "$src"
# The working tree as it is (tracked and new files), without build output. Extracted with
# fresh modification times, so cargo rebuilds over whatever an earlier mutant left in the
# target directory.
(cd "$repo" && git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf -) | tar -xmf - -C "$src"
# A target directory of its own: cargo's artifacts of path packages do not depend on where
# the workspace lies, so mutated builds in the working tree's target directory would later
# pass for fresh builds of the working tree.
export CARGO_TARGET_DIR=${MUTANTS_TARGET:-$out/target}

build() {
    (cd "$src" && cargo test -p conformance-tests --test conformance --no-run 2>&1) |
        sed -n 's/.*Executable tests\/conformance.rs (\(.*\))$/\1/p' | tail -1
}

run() { # $1: label; prints the failing case IDs
    local bin=$1 label=$2
    NVME_TEST_SIM_SHAPES=$shapes CONFORMANCE_RESULTS=$out/$label.tsv \
        timeout "$limit" "$bin" >"$out/$label.log" 2>&1 || true
    [[ -f $out/$label.tsv ]] || { echo "TIMEOUT"; return; }
    awk -F'\t' '$4 == "fail" { print $3 }' "$out/$label.tsv" | sort -u | paste -sd' ' -
}

echo "mutants: baseline (unmutated simulator, shapes $shapes)"
bin=$(build)
[[ -n $bin ]] || { echo "mutants: the unmutated tree does not build" >&2; exit 1; }
rm -f "$out/baseline.tsv"
base=$(run "$bin" baseline)
if [[ -n $base ]]; then
    echo "mutants: the unmutated simulator fails: $base (see $out/baseline.log)" >&2
    exit 1
fi

table=$out/table.md
{
    echo "| mutant | where | defect | cases that fail |"
    echo "|---|---|---|---|"
} >"$table"
missed=0
for i in "${!ids[@]}"; do
    id=${ids[$i]} f=${files[$i]}
    if ((${#want[@]})) && [[ ! " ${want[*]} " == *" $id "* ]]; then continue; fi
    cp "$repo/$f" "$src/$f"
    sed -i "${progs[$i]}" "$src/$f"
    if cmp -s "$repo/$f" "$src/$f"; then
        echo "mutants: $id does not apply to $f (the code changed): update its sed program" >&2
        caught="NOT APPLIED"
        missed=$((missed + 1))
    else
        rm -f "$out/$id.tsv"
        bin=$(build)
        if [[ -z $bin ]]; then
            caught="DOES NOT BUILD"
            missed=$((missed + 1))
        else
            caught=$(run "$bin" "$id")
            if [[ -z $caught && -n ${unobservable[$id]:-} ]]; then
                caught=${unobservable[$id]}
            elif [[ -z $caught || $caught == TIMEOUT ]]; then
                missed=$((missed + 1))
                caught=${caught:-NONE}
            fi
        fi
    fi
    cp "$repo/$f" "$src/$f"
    echo "mutants: $id ${descs[$i]}: $caught"
    echo "| $id | \`${f#sim-backend/src/}\` | ${descs[$i]} | $caught |" >>"$table"
done
if ((${#want[@]} == 0)); then
    # A full run: the table goes into docs/conformance.md (through the conformance harness).
    cp "$table" "$repo/conformance-tests/mutants.md"
fi
echo "mutants: table in $table; $missed mutant(s) not caught"
[[ $missed -eq 0 ]]
