//! The offline command store.
//!
//! This crate will own the `Store` trait for commands queued while their device is away,
//! its backends (memory, SQLite, PostgreSQL, Redis, RabbitMQ) behind cargo features, and the
//! conformance suite every backend runs. It is being built under issue 7; until then it
//! exports nothing.
