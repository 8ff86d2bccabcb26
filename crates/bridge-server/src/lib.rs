//! The bridge server.
//!
//! This crate composes the hub, the session manager and the queue into the HTTP and
//! WebSocket server of PROTOCOL.md. Being built under issue 5; so far it holds the pieces
//! that do not depend on the other crates:
//!
//! * [`auth`]: HS256 JWT authentication and development mode (PROTOCOL.md 1).
//! * [`config`]: the command line, `BRIDGE_*` environment variables and the TOML file.

pub mod auth;
pub mod config;
