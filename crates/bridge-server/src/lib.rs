//! The bridge server.
//!
//! This crate will compose the hub, the session manager and the queue into the HTTP and
//! WebSocket server of PROTOCOL.md, with authentication, configuration and metrics. It is
//! being built under issue 5; until then it exports nothing.
