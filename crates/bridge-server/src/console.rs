//! The operator console: `GET /console`, a page for people who run a fleet (devices online
//! and their bridges, a device's queue with confirm and cancel, sending a command, the live
//! feed, the headline metrics).
//!
//! Its three files (`console/index.html`, `console.js`, `console.css` in this crate) are
//! compiled into the binary with `include_str!`: nothing to install, no Node toolchain.
//! The page holds nothing secret, so it loads without a token; the script calls only the
//! public API (PROTOCOL.md 4, the stream of 4.5), with the `service` token it keeps in the
//! tab's session storage. Every answer carries a strict Content-Security-Policy (scripts,
//! styles and calls from this origin only, no inline script, no framing, no form posts)
//! and an `ETag`, revalidated on each load (`Cache-Control: no-cache`), so a new binary's
//! console is never shadowed by a cached one.
//!
//! The overview lists `GET /v1/devices` and reads each online device's detail (`holders`,
//! queue size) with `GET /v1/devices/{id}`, at most 200 devices and six requests at a
//! time, on each full refresh: every 15 s while the stream is live (a streamed change
//! re-reads only its device), every 3 s while polling. A device's page re-reads its queue
//! every 3 s, since the stream says when a command ends, not when one is queued.
//!
//! Paths are relative (`console/console.js`, `v1/devices`), so the console also works
//! when [`Server::router`](crate::Server::router) is nested under a prefix.

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

/// One embedded file.
struct Asset {
    body: &'static str,
    content_type: &'static str,
    etag: &'static str,
}

/// A strong `ETag` of `body`: FNV-1a, 64 bits, in quotes (computed at compile time).
#[allow(clippy::cast_lossless, clippy::cast_possible_truncation)]
const fn etag_bytes(body: &str) -> [u8; 18] {
    let bytes = body.as_bytes();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    let digits = b"0123456789abcdef";
    let mut out = [b'"'; 18];
    let mut j = 0;
    while j < 16 {
        out[1 + j] = digits[((hash >> (60 - 4 * j)) & 0xf) as usize];
        j += 1;
    }
    out
}

macro_rules! asset {
    ($file:literal, $content_type:literal) => {{
        const BODY: &str = include_str!(concat!("../console/", $file));
        const TAG: [u8; 18] = etag_bytes(BODY);
        Asset {
            body: BODY,
            content_type: $content_type,
            etag: match std::str::from_utf8(&TAG) {
                Ok(tag) => tag,
                Err(_) => panic!("an ETag is ASCII"),
            },
        }
    }};
}

const INDEX: Asset = asset!("index.html", "text/html; charset=utf-8");
const SCRIPT: Asset = asset!("console.js", "text/javascript; charset=utf-8");
const STYLE: Asset = asset!("console.css", "text/css; charset=utf-8");

/// What the console's page may load and call: its own origin only, no inline script or
/// style, nothing framed, no form submitted anywhere (every form is handled by the
/// script, so a token typed in can never end up in a URL).
pub(crate) const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

/// The console's routes: `/console`, its two assets, and `/console/` sent to `/console`.
pub(crate) fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/console",
            get(|h: HeaderMap| async move { serve(&INDEX, &h) }),
        )
        .route(
            "/console/",
            get(|| async { Redirect::permanent("../console") }),
        )
        .route(
            "/console/console.js",
            get(|h: HeaderMap| async move { serve(&SCRIPT, &h) }),
        )
        .route(
            "/console/console.css",
            get(|h: HeaderMap| async move { serve(&STYLE, &h) }),
        )
}

fn serve(asset: &Asset, request: &HeaderMap) -> Response {
    let fresh = request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| {
            let tag = tag.trim();
            tag == "*" || tag.trim_start_matches("W/") == asset.etag
        });
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (StatusCode::OK, asset.body).into_response()
    };
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    headers.insert(header::ETAG, HeaderValue::from_static(asset.etag));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_differ_with_the_content_and_are_quoted_hex() {
        let a = etag_bytes("console.js v1");
        let b = etag_bytes("console.js v2");
        assert_ne!(a, b);
        assert_eq!((a[0], a[17]), (b'"', b'"'));
        assert!(a[1..17].iter().all(u8::is_ascii_hexdigit));
        assert_ne!(INDEX.etag, SCRIPT.etag);
    }

    #[test]
    fn the_page_loads_its_assets_by_relative_paths_and_has_no_inline_script() {
        // Relative paths keep the console working under a prefix; the CSP forbids inline
        // script, so the page must have none (an inline handler would be dead code).
        assert!(INDEX.body.contains(r#"src="console/console.js""#));
        assert!(INDEX.body.contains(r#"href="console/console.css""#));
        assert!(!INDEX.body.contains("<script>"));
        assert!(!INDEX.body.contains(" onclick="));
        assert!(!INDEX.body.contains("style="));
        assert!(!SCRIPT.body.contains("innerHTML"));
        assert!(!SCRIPT.body.contains("'/v1"), "API paths stay relative");
    }
}
