//! Project chores; see `cargo xtask`.
fn main() {}
