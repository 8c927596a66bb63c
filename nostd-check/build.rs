fn main() {
    // No C runtime start files: `_start` is ours.
    println!("cargo:rustc-link-arg-bins=-nostartfiles");
}
