//! Runnable examples of the bridge crates used as libraries, each one command from the
//! repository root:
//!
//! * `cargo run -p examples --example embedded` — `bridge-server` mounted under `/bridge`
//!   in an axum app of its own, with lifecycle hooks and an application frame type.
//! * `cargo run -p examples --example session_alone` — `bridge-session` alone, over a
//!   transport of its own (no hub, no server).
//! * `cargo run -p examples --example custom_hub` — the server on a `Hub` of its own.
//! * `cargo test -p examples --example custom_store` — a `Store` of its own through the
//!   conformance suite (`cargo run` serves with it).
//!
//! The README's "In your own service" section walks through them.
