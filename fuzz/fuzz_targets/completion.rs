//! libFuzzer entry point of the `completion` target; the logic and the properties live in
//! [`nvme_fuzz::run_completion`] so that `tests/replay.rs` runs the same code on stable.
#![cfg_attr(fuzzing, no_main)]

#[cfg(fuzzing)]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    nvme_fuzz::run_completion(data);
});

/// Outside `cargo fuzz` (a plain `cargo build` or `cargo test`), run the files named on
/// the command line through the target once each.
#[cfg(not(fuzzing))]
fn main() {
    for path in std::env::args().skip(1) {
        let data = std::fs::read(&path).expect("readable input file");
        nvme_fuzz::run_completion(&data);
        println!("{path}: ok");
    }
}
