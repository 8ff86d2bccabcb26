//! The WebSocket connection hub.
//!
//! This crate will own connection lifecycle, presence (which bridge holds which device),
//! subscriptions, broadcast, the read and write pumps, keepalive and per-connection limits,
//! behind the `Hub` trait. It is being built under issue 4; until then it exports nothing.
