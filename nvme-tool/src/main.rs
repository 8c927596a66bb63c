//! nvme-tool
fn main() {}
