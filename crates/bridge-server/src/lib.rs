//! The bridge server (PROTOCOL.md, all of it).
//!
//! This crate composes the connection hub (`bridge-hub`), the session manager
//! (`bridge-session`) and the offline queue (`bridge-queue`) into the HTTP and WebSocket
//! server of PROTOCOL.md, and is the `bridge-server` binary.
//!
//! * [`Server::builder`] takes a [`ServerConfig`] and optionally a store, a device-type
//!   registry, hub settings and a [`Hub`](bridge_hub::Hub) wrapper;
//!   [`Server::router`] is an axum [`Router`](axum::Router) to mount in an application, and
//!   [`Server::serve`] runs it with graceful shutdown.
//! * [`auth`]: HS256 JWT authentication and development mode (PROTOCOL.md 1).
//! * [`config`]: the command line, `BRIDGE_*` environment variables and the TOML file.
//! * [`open_store`]: the queue backend a `--queue` URL names.
//!
//! # Example
//!
//! ```
//! use bridge_server::{Server, ServerConfig};
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Development mode, in-memory queue, the built-in `smart-lock` device type.
//! let server = Server::builder(ServerConfig::default()).build();
//! let router = server.router();
//!
//! let request = axum::http::Request::get("/healthz").body(axum::body::Body::empty())?;
//! let response = router.clone().oneshot(request).await?;
//! assert_eq!(response.status(), 200);
//!
//! // A device never seen is offline, not 404.
//! let request = axum::http::Request::get("/v1/devices/lock-1").body(axum::body::Body::empty())?;
//! let response = router.oneshot(request).await?;
//! let body = axum::body::to_bytes(response.into_body(), 1024).await?;
//! assert_eq!(
//!     body,
//!     r#"{"deviceId":"lock-1","online":false,"bleConnected":null,"bridges":0,"pendingCommands":0}"#
//! );
//! # Ok(())
//! # }
//! ```

pub mod auth;
mod commands;
pub mod config;
mod delivery;
mod error;
mod events;
mod metrics;
mod routes;
mod server;
mod store;
mod transport;
mod ws;

pub use config::{Cli, ConfigError, LogFormat, QueueUrl, ServerConfig};
pub use delivery::DeliveryConfig;
pub use error::ServerError;
pub use server::{Server, ServerBuilder};
pub use store::open_store;
