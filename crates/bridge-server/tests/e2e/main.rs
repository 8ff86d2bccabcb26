//! End-to-end tests: the real server over loopback, real HTTP and WebSocket clients.

// Test scaffolding: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, unreachable_pub, dead_code)]

mod auth;
mod clients;
mod cluster;
mod console;
mod embed;
mod fast_path;
mod frames;
mod hooks;
mod hops;
mod hostile;
mod http;
mod http2;
mod mqtt;
mod openapi;
mod paused;
mod process;
mod queue;
mod secure;
mod support;
mod two_nodes;
mod wire;
mod ws;
