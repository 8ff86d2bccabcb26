//! End-to-end tests: the real server over loopback, real HTTP and WebSocket clients.

// Test scaffolding: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, unreachable_pub, dead_code)]

mod auth;
mod clients;
mod hops;
mod hostile;
mod http;
mod paused;
mod process;
mod queue;
mod support;
mod two_nodes;
mod ws;
