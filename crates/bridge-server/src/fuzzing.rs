//! Pure entry points into the server's private decoders of hostile input, for the fuzz
//! targets (`crates/bridge-fuzz`, `cargo xtask fuzz`). Behind the `fuzzing` feature; not a
//! stable API.
//!
//! The rest of what a client sends the server is decoded by public functions already:
//! frames and bodies by `bridge-protocol`, tokens by [`Authenticator`](crate::auth::Authenticator).

use bridge_protocol::DeviceId;

/// The `deviceId` filter of a `GET /v1/stream` query string (without the `?`), as the
/// route reads it: `Ok(None)` for every device, `Err` with the 400's message.
pub fn stream_device_filter(query: &str) -> Result<Option<Vec<DeviceId>>, String> {
    crate::stream::device_filter(Some(query))
}

/// The query parameters of a `GET /ws` request whose request target is `target` (such as
/// `/ws?userId=alice&deviceId=lock-1`), as the upgrade reads them before authenticating:
/// `None` if `target` is not a request target at all (hyper refuses it before the server
/// sees it), `Some(Err)` with the 400's message if its query cannot be read.
pub fn ws_query(target: &str) -> Option<Result<Vec<(String, String)>, String>> {
    let uri = target.parse::<axum::http::Uri>().ok()?;
    Some(crate::ws::upgrade_query(&uri))
}
