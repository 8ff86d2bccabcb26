//! Request-id correlation between commands and device answers.
//!
//! This crate will own the pending-command lifecycle: registering a command under a fresh
//! request id, resolving it only with an answer from the right connection and device, and
//! ending it on timeout, bridge loss, cancellation or shutdown. It is being built under
//! issue 3; until then it exports nothing.
