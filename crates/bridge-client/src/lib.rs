//! The bridge and user side of the protocol.
//!
//! This crate will hold the client library a phone app or a user's program would use, and
//! the `bridge-sim` phone simulator. It is being built under issue 6; until then it exports
//! nothing.
