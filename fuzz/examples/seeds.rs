//! Writes the seed inputs of every target into `corpus/<target>/seed-<name>`:
//! `cargo run --manifest-path fuzz/Cargo.toml --example seeds`.

fn main() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (target, name, bytes) in nvme_fuzz::seeds::all() {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).expect("corpus directory");
        std::fs::write(dir.join(format!("seed-{name}")), &bytes).expect("write seed");
        println!("{target}/seed-{name}: {} bytes", bytes.len());
    }
}
