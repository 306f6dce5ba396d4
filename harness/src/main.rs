//! Load harness (placeholder).
fn main() {}
