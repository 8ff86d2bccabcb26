//! Authentication and authorization (PROTOCOL.md 1.1 and 1.2).
//!
//! Two modes. With a secret, every WebSocket connection and HTTP call carries an HS256 JWT
//! (`Authorization: Bearer <jwt>`, or `?token=<jwt>` for browsers' WebSockets) whose `role`
//! decides what the connection is and whose `devices` decide what it may touch. Without a
//! secret (development mode, loopback only), identity comes from query parameters and every
//! device is allowed, and every request must come from a loopback client
//! ([`Authenticator::check_loopback`]: its `Host` and `Origin`), so that no web page can
//! drive the server.
//!
//! A refusal is an [`AuthError`], answered before the WebSocket upgrade with 401 (missing,
//! malformed, bad signature, expired) or 403 (valid, but asks for a device or role it may not
//! have).

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bridge_protocol::{Credentials, DeviceId, ErrorCode, Hello, Role, UserId};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

/// The claims of a bridge token (PROTOCOL.md 1.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// `user`, `bridge` or `service`.
    pub role: Role,
    /// Device ids this token may bridge (`bridge`) or watch and command (`user`); absent
    /// means none. Ignored for `service`, which reaches every device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<Vec<String>>,
    /// Expiry, in seconds since the Unix epoch. A token whose `exp` lies past
    /// [`Claims::MAX_EXP`] is refused as malformed.
    pub exp: u64,
}

impl Claims {
    /// The latest `exp` a token may carry: 9999-12-31T23:59:59Z (PROTOCOL.md 1.1). Later
    /// ones are malformed, so that no expiry overflows a clock.
    pub const MAX_EXP: u64 = 253_402_300_799;
}

impl Claims {
    /// Signs the claims with HS256. For tests, tools and applications that mint tokens.
    pub fn encode(&self, secret: &[u8]) -> Result<String, AuthError> {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            self,
            &EncodingKey::from_secret(secret),
        )
        .map_err(|e| AuthError::Malformed(e.to_string()))
    }
}

/// Which devices a principal may touch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceGrant {
    /// Every device (service tokens, development mode).
    All,
    /// Only these.
    Only(HashSet<DeviceId>),
}

impl DeviceGrant {
    /// Whether `device` is allowed.
    pub fn allows(&self, device: &DeviceId) -> bool {
        match self {
            Self::All => true,
            Self::Only(set) => set.contains(device),
        }
    }

    /// The listed devices (empty for [`DeviceGrant::All`]).
    pub fn listed(&self) -> Vec<DeviceId> {
        match self {
            Self::All => Vec::new(),
            Self::Only(set) => {
                let mut devices: Vec<DeviceId> = set.iter().cloned().collect();
                devices.sort();
                devices
            }
        }
    }
}

/// Who is on the other end of a connection or HTTP call, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The user id (`sub`, or `userId` in development mode).
    pub subject: String,
    /// The role, from the token only.
    pub role: Role,
    /// The devices it may bridge (bridge) or watch and command (user).
    pub devices: DeviceGrant,
    /// When its token expires, in seconds since the Unix epoch (`None` in development mode).
    pub expires_at: Option<u64>,
}

/// A WebSocket connection's identity: its principal and, for a bridge, the devices it named
/// when it connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsIdentity {
    /// Who it is.
    pub principal: Principal,
    /// For a bridge, the `deviceId` query parameters, each allowed; empty for a user.
    pub initial_devices: Vec<DeviceId>,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No token was sent (or, in development mode, no `userId`).
    #[error("missing credentials: {0}")]
    Missing(&'static str),
    /// The token is not a well-formed JWT with the required claims.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The signature does not match the configured secret.
    #[error("token signature does not verify")]
    BadSignature,
    /// The token's `exp` has passed.
    #[error("token expired")]
    Expired,
    /// A valid token whose role may not do this.
    #[error("role `{}` may not {action}", role.as_str())]
    WrongRole {
        /// The token's role.
        role: Role,
        /// What it tried.
        action: &'static str,
    },
    /// A valid token that does not grant this device.
    #[error("token does not grant device `{0}`")]
    DeviceNotAllowed(DeviceId),
    /// Development mode, and the request's `Host` is not a loopback name or address, or
    /// its `Origin` is not a loopback origin (PROTOCOL.md 1.2): a web page or a DNS
    /// rebinding may not drive an unauthenticated server.
    #[error(
        "development mode serves loopback clients only: the `{header}` header is not a loopback {}",
        if *header == "Origin" { "origin" } else { "name or address" }
    )]
    NotLoopback {
        /// `Host` or `Origin`.
        header: &'static str,
    },
    /// A query parameter that is not valid (such as an empty or overlong `deviceId`).
    #[error("invalid query parameter `{name}`: {reason}")]
    BadParameter {
        /// The parameter.
        name: &'static str,
        /// Why.
        reason: String,
    },
}

impl AuthError {
    /// The HTTP status of the refusal: 401 for missing or invalid credentials, 403 for valid
    /// credentials that do not allow the request.
    pub fn http_status(&self) -> u16 {
        self.code().http_status()
    }

    /// The error code of the refusal's body.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Missing(_) | Self::Malformed(_) | Self::BadSignature | Self::Expired => {
                ErrorCode::Unauthorized
            }
            Self::WrongRole { .. } | Self::DeviceNotAllowed(_) | Self::NotLoopback { .. } => {
                ErrorCode::Forbidden
            }
            Self::BadParameter { .. } => ErrorCode::InvalidRequest,
        }
    }
}

/// What a WebSocket upgrade request carries that matters for authentication.
#[derive(Debug, Clone, Default)]
pub struct UpgradeRequest {
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
    /// The decoded query parameters, in order (`deviceId` may repeat).
    pub query: Vec<(String, String)>,
}

impl UpgradeRequest {
    fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn device_params(&self) -> Result<Vec<DeviceId>, AuthError> {
        let mut devices = Vec::new();
        for (_, value) in self.query.iter().filter(|(k, _)| k == "deviceId") {
            let id = DeviceId::new(value).map_err(|e| AuthError::BadParameter {
                name: "deviceId",
                reason: e.to_string(),
            })?;
            if !devices.contains(&id) {
                devices.push(id);
            }
        }
        Ok(devices)
    }
}

/// The transport a connection comes over: what it may be, and how a refusal reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    /// `GET /ws`: users and bridges.
    WebSocket,
    /// An MQTT `hello` (PROTOCOL.md 6): bridges only.
    Mqtt,
}

impl Transport {
    fn action(self) -> &'static str {
        match self {
            Self::WebSocket => "open a WebSocket connection",
            Self::Mqtt => "connect as a bridge over MQTT",
        }
    }
}

/// The `Authorization` header a connection's requests were last accepted with by
/// [`Authenticator::holds_service_token_on`], and that token's expiry: one per HTTP
/// connection, so that a backend's kept-alive connection, which sends the same header on
/// every request, has it checked by comparing its bytes.
#[derive(Debug, Default)]
pub(crate) struct HeldToken {
    /// The header's bytes, as they came.
    header: Vec<u8>,
    /// `Some` once a header is held: its token's expiry, in seconds since the Unix epoch
    /// (`u64::MAX` for a token without one).
    held: Option<u64>,
}

impl HeldToken {
    /// A longer header is not kept (it is looked up in the shared map each time): a
    /// connection holds no more than this.
    const MAX_HEADER: usize = 4096;
}

/// Checks credentials in the configured mode.
#[derive(Clone)]
pub struct Authenticator {
    mode: Mode,
}

#[derive(Clone)]
enum Mode {
    Jwt {
        key: DecodingKey,
        validation: Box<Validation>,
        services: Arc<ServiceTokens>,
    },
    Development,
}

/// `service` tokens that passed [`Authenticator::verify`], by their exact text, until their
/// `exp`: a backend calls with the same token again and again, and the HMAC, the base64 and
/// the JSON of a token need to run once per token, not once per call.
///
/// Only a token that verified is ever stored, so the cache cannot be filled with forged
/// ones; a hit checks the expiry again (to the second, as the verification does), so a
/// cached token does not outlive its `exp`. The map is bounded: when it is full, expired
/// entries go first, and if none has expired it is emptied (every token is then verified
/// once more) — many distinct valid service tokens cost what they cost without the cache,
/// never unbounded memory.
#[derive(Default)]
struct ServiceTokens {
    /// Keyed by the token's bytes, so that a header's bytes are looked up as they are (a
    /// stored token is text, so bytes equal to one are that text).
    by_token: RwLock<HashMap<Box<[u8]>, Principal, TokenHashing>>,
}

/// The hashing of [`ServiceTokens`]' keys: eight bytes of a token per step, keyed with
/// random values per map, rather than the standard SipHash-1-3 (one byte at a time: about
/// 550 instructions for a typical ~150-byte token, on every HTTP call). Flooding is not a
/// concern here: only verified tokens are stored (no one without the secret chooses the
/// keys), and at most [`ServiceTokens::CAPACITY`] of them.
#[derive(Clone)]
struct TokenHashing {
    seed: u64,
    key: u64,
}

impl Default for TokenHashing {
    fn default() -> Self {
        use std::hash::BuildHasher as _;
        let random = std::collections::hash_map::RandomState::new();
        Self {
            seed: random.hash_one(0x5eed_u64),
            // Odd, so that the multiplications by it lose no bit.
            key: random.hash_one(0x006b_6579_u64) | 1,
        }
    }
}

impl std::hash::BuildHasher for TokenHashing {
    type Hasher = TokenHasher;

    fn build_hasher(&self) -> TokenHasher {
        TokenHasher {
            state: self.seed,
            key: self.key,
        }
    }
}

/// The hasher of [`TokenHashing`].
struct TokenHasher {
    state: u64,
    key: u64,
}

impl TokenHasher {
    /// The high and low halves of the full product, folded: every bit of both inputs
    /// reaches the result.
    fn fold(a: u64, b: u64) -> u64 {
        let product = u128::from(a) * u128::from(b);
        #[allow(clippy::cast_possible_truncation)]
        let (low, high) = (product as u64, (product >> 64) as u64);
        low ^ high
    }

    fn mix(&mut self, word: u64) {
        self.state = Self::fold(self.state ^ word, self.key);
    }
}

impl std::hash::Hasher for TokenHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            let mut buffer = [0u8; 8];
            buffer.copy_from_slice(word);
            self.mix(u64::from_le_bytes(buffer));
        }
        let rest = words.remainder();
        // The tail's length in its free top byte: tails that differ only by trailing zero
        // bytes differ.
        let mut buffer = [0u8; 8];
        buffer[..rest.len()].copy_from_slice(rest);
        self.mix(u64::from_le_bytes(buffer) | ((rest.len() as u64) << 56));
    }

    fn finish(&self) -> u64 {
        Self::fold(self.state, self.key.rotate_left(32) | 1)
    }
}

impl ServiceTokens {
    /// At most this many tokens are remembered.
    const CAPACITY: usize = 1024;

    /// The principal of a verified token that has not expired at `now`.
    fn lookup(&self, token: &str, now: u64) -> Option<Principal> {
        let by_token = self.by_token.read();
        let principal = by_token.get(token.as_bytes())?;
        principal
            .expires_at
            .is_none_or(|exp| exp >= now)
            .then(|| principal.clone())
    }

    /// Whether a verified token is remembered and has not expired at `now`: `token` is
    /// the token's bytes, which need not be checked as UTF-8 first.
    fn holds(&self, token: &[u8], now: u64) -> bool {
        self.held(token, now).is_some()
    }

    /// [`holds`](Self::holds), with the remembered token's expiry (`u64::MAX`: none).
    fn held(&self, token: &[u8], now: u64) -> Option<u64> {
        let by_token = self.by_token.read();
        let expires_at = by_token.get(token)?.expires_at.unwrap_or(u64::MAX);
        (expires_at >= now).then_some(expires_at)
    }

    fn remember(&self, token: &str, principal: &Principal, now: u64) {
        let mut by_token = self.by_token.write();
        if by_token.len() >= Self::CAPACITY {
            by_token.retain(|_, p| p.expires_at.is_none_or(|exp| exp >= now));
            if by_token.len() >= Self::CAPACITY {
                by_token.clear();
            }
        }
        by_token.insert(token.as_bytes().into(), principal.clone());
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_token.read().len()
    }
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match self.mode {
            Mode::Jwt { .. } => "jwt",
            Mode::Development => "development",
        };
        f.debug_struct("Authenticator")
            .field("mode", &mode)
            .finish()
    }
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Authenticator {
    /// Authenticated mode: HS256 tokens signed with `secret`. Expiry is checked to the second
    /// (no leeway).
    pub fn jwt(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            mode: Mode::Jwt {
                key: DecodingKey::from_secret(secret),
                validation: Box::new(validation),
                services: Arc::default(),
            },
        }
    }

    /// Development mode: identity from query parameters, every device allowed.
    pub fn development() -> Self {
        Self {
            mode: Mode::Development,
        }
    }

    /// True in development mode.
    pub fn is_development(&self) -> bool {
        matches!(self.mode, Mode::Development)
    }

    fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let Mode::Jwt {
            key, validation, ..
        } = &self.mode
        else {
            return Err(AuthError::Malformed(
                "tokens are not used in development mode".into(),
            ));
        };
        let data =
            jsonwebtoken::decode::<Claims>(token, key, validation).map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                _ => AuthError::Malformed(e.to_string()),
            })?;
        let claims = data.claims;
        if claims.exp > Claims::MAX_EXP {
            return Err(AuthError::Malformed(
                "claim `exp` lies past 9999-12-31".into(),
            ));
        }
        UserId::new(&claims.sub).map_err(|e| AuthError::Malformed(format!("claim `sub`: {e}")))?;
        let devices = if claims.role == Role::Service {
            DeviceGrant::All
        } else {
            let mut set = HashSet::new();
            for id in claims.devices.unwrap_or_default() {
                let id = DeviceId::new(&id)
                    .map_err(|e| AuthError::Malformed(format!("claim `devices`: {e}")))?;
                set.insert(id);
            }
            DeviceGrant::Only(set)
        };
        Ok(Principal {
            subject: claims.sub,
            role: claims.role,
            devices,
            expires_at: Some(claims.exp),
        })
    }

    /// The loopback check of development mode (PROTOCOL.md 1.2), for every request and
    /// WebSocket upgrade before anything else: `hosts` are the request's `Host` header
    /// values (and the authority of an absolute request target), `origins` its `Origin`
    /// header values. Refused with [`AuthError::NotLoopback`] (403 `forbidden`) when a host
    /// is not `localhost`, an address in `127.0.0.0/8` or `[::1]` (any port), when there is
    /// more than one `Host`, or when an `Origin` is not such a host over `http` or `https`
    /// (`null` included). A request with no `Host` at all (HTTP/1.0, or a router called
    /// in-process) is not a browser's and passes. Always passes in authenticated mode.
    pub fn check_loopback<'a>(
        &self,
        hosts: &[Option<&'a str>],
        origins: impl IntoIterator<Item = Option<&'a str>>,
    ) -> Result<(), AuthError> {
        if !self.is_development() {
            return Ok(());
        }
        let host_ok = match hosts {
            [] => true,
            [host] => host.is_some_and(is_loopback_host),
            _ => false,
        };
        if !host_ok {
            return Err(AuthError::NotLoopback { header: "Host" });
        }
        if origins
            .into_iter()
            .any(|origin| !origin.is_some_and(is_loopback_origin))
        {
            return Err(AuthError::NotLoopback { header: "Origin" });
        }
        Ok(())
    }

    /// Authenticates a WebSocket upgrade (`GET /ws`).
    pub fn authenticate_ws(&self, request: &UpgradeRequest) -> Result<WsIdentity, AuthError> {
        let credential = if self.is_development() {
            request
                .param("userId")
                .ok_or(AuthError::Missing("the `userId` query parameter"))?
        } else {
            bearer(request.authorization.as_deref())
                .or_else(|| request.param("token"))
                .ok_or(AuthError::Missing(
                    "a bearer token or the `token` query parameter",
                ))?
        };
        self.authenticate_connection(credential, || request.device_params(), Transport::WebSocket)
    }

    /// Authenticates an MQTT bridge's `hello` (PROTOCOL.md 6) exactly as a WebSocket
    /// upgrade: its `token` stands for the bearer token, its `userId` for development
    /// mode's `?userId=`, its `deviceIds` for the `deviceId` query parameters. Over MQTT
    /// only bridges connect: a `user` token is refused (403 `forbidden` over WebSocket's
    /// terms), and a development-mode `hello` is a bridge even with no `deviceIds`.
    pub fn authenticate_hello(&self, hello: &Hello) -> Result<WsIdentity, AuthError> {
        let credential = match (&hello.credentials, self.is_development()) {
            (Credentials::UserId(user), true) => user.as_str(),
            (Credentials::Token(token), false) => token.as_str(),
            (_, true) => return Err(AuthError::Missing("`userId` in the `hello`")),
            (_, false) => return Err(AuthError::Missing("`token` in the `hello`")),
        };
        self.authenticate_connection(credential, || Ok(hello.device_ids.clone()), Transport::Mqtt)
    }

    /// What both transports share: `credential` is the token (or, in development mode, the
    /// user id), `devices` the devices named when connecting (read only where they count).
    fn authenticate_connection(
        &self,
        credential: &str,
        devices: impl FnOnce() -> Result<Vec<DeviceId>, AuthError>,
        transport: Transport,
    ) -> Result<WsIdentity, AuthError> {
        if self.is_development() {
            let subject = UserId::new(credential).map_err(|e| AuthError::BadParameter {
                name: "userId",
                reason: e.to_string(),
            })?;
            let devices = devices()?;
            let role = if devices.is_empty() && transport == Transport::WebSocket {
                Role::User
            } else {
                Role::Bridge
            };
            return Ok(WsIdentity {
                principal: Principal {
                    subject: subject.as_str().to_owned(),
                    role,
                    devices: DeviceGrant::All,
                    expires_at: None,
                },
                initial_devices: devices,
            });
        }
        let principal = self.verify(credential)?;
        let initial_devices = match (principal.role, transport) {
            // A user token's role cannot be raised by query parameters: `deviceId` is ignored.
            (Role::User, Transport::WebSocket) => Vec::new(),
            (Role::Bridge, _) => {
                let devices = devices()?;
                if let Some(denied) = devices.iter().find(|d| !principal.devices.allows(d)) {
                    return Err(AuthError::DeviceNotAllowed(denied.clone()));
                }
                devices
            }
            (role, transport) => {
                return Err(AuthError::WrongRole {
                    role,
                    action: transport.action(),
                });
            }
        };
        Ok(WsIdentity {
            principal,
            initial_devices,
        })
    }

    /// Authenticates a call to the HTTP API, which needs a `service` token. A token verified
    /// before is recognised by its exact text until its `exp` (a bounded cache: the
    /// signature of a backend's token is checked once, not on every call).
    pub fn authenticate_service(
        &self,
        authorization: Option<&str>,
    ) -> Result<Principal, AuthError> {
        let services = match &self.mode {
            Mode::Development => {
                return Ok(Principal {
                    subject: "development".into(),
                    role: Role::Service,
                    devices: DeviceGrant::All,
                    expires_at: None,
                });
            }
            Mode::Jwt { services, .. } => services,
        };
        let token = bearer(authorization).ok_or(AuthError::Missing("a bearer token"))?;
        if let Some(principal) = services.lookup(token, unix_now()) {
            return Ok(principal);
        }
        self.verify_service(services, token)
    }

    /// [`Authenticator::authenticate_service`] for a caller that needs only the answer, not
    /// the principal: a remembered token costs a map lookup and no allocation.
    pub fn check_service(&self, authorization: Option<&str>) -> Result<(), AuthError> {
        let Mode::Jwt { services, .. } = &self.mode else {
            return Ok(());
        };
        let token = bearer(authorization).ok_or(AuthError::Missing("a bearer token"))?;
        if services.holds(token.as_bytes(), unix_now()) {
            return Ok(());
        }
        self.verify_service(services, token).map(drop)
    }

    /// Whether `authorization`, an `Authorization` header's raw bytes, is `Bearer` and a
    /// remembered `service` token that has not expired: what [`check_service`] answers `Ok`
    /// from its cache, read from the bytes without first checking that the whole header is
    /// visible ASCII (`HeaderValue::to_str`, one byte at a time), nor the token UTF-8 (the
    /// remembered ones are looked up by their bytes). When this says yes,
    /// [`check_service`] says `Ok` for the header's text: the token equals a verified one
    /// (visible ASCII), the scheme is the six letters of `bearer`, and what is trimmed is
    /// spaces and tabs. When it says no, call [`check_service`] (through `to_str`) for the
    /// answer: a token to verify, or the refusal.
    ///
    /// [`check_service`]: Self::check_service
    pub(crate) fn holds_service_token(&self, authorization: &[u8]) -> bool {
        self.held_service_token(authorization, unix_now()).is_some()
    }

    /// [`holds_service_token`](Self::holds_service_token) at `now`, with the token's
    /// expiry (`u64::MAX`: none).
    fn held_service_token(&self, authorization: &[u8], now: u64) -> Option<u64> {
        let Mode::Jwt { services, .. } = &self.mode else {
            return None;
        };
        let value = trim_blanks(authorization);
        let space = value.iter().position(|&b| b == b' ')?;
        let (scheme, token) = (&value[..space], trim_blanks(&value[space + 1..]));
        if !scheme.eq_ignore_ascii_case(b"bearer") || token.is_empty() {
            return None;
        }
        services.held(token, now)
    }

    /// [`holds_service_token`](Self::holds_service_token) for a request of a connection
    /// whose earlier answers are in `connection`: a header equal to the last one this said
    /// yes to on that connection is answered from there (its expiry checked again, to the
    /// second), without parsing it again nor looking it up in the shared map (a lock, a
    /// hash of the whole token and its comparison, on every call of a backend that calls
    /// with the same header again and again on a kept-alive connection). The answer is the
    /// same: a token once verified stays valid until its `exp` (the key does not change,
    /// and tokens are not revoked), and the shared map only forgets one that has expired
    /// or when it is full, after which [`check_service`](Self::check_service) would verify
    /// it again and accept it.
    pub(crate) fn holds_service_token_on(
        &self,
        authorization: &[u8],
        connection: &mut HeldToken,
    ) -> bool {
        self.holds_service_token_at(authorization, connection, unix_now())
    }

    /// [`holds_service_token_on`](Self::holds_service_token_on) at `now`.
    fn holds_service_token_at(
        &self,
        authorization: &[u8],
        connection: &mut HeldToken,
        now: u64,
    ) -> bool {
        if let Some(expires_at) = connection.held
            && connection.header == authorization
        {
            return expires_at >= now;
        }
        let Some(expires_at) = self.held_service_token(authorization, now) else {
            return false;
        };
        if authorization.len() <= HeldToken::MAX_HEADER {
            connection.header.clear();
            connection.header.extend_from_slice(authorization);
            connection.held = Some(expires_at);
        }
        true
    }

    fn verify_service(
        &self,
        services: &ServiceTokens,
        token: &str,
    ) -> Result<Principal, AuthError> {
        let principal = self.verify(token)?;
        if principal.role != Role::Service {
            return Err(AuthError::WrongRole {
                role: principal.role,
                action: "call the HTTP API",
            });
        }
        services.remember(token, &principal, unix_now());
        Ok(principal)
    }
}

/// Whether `host` (a `Host` header value: a name or address and an optional port) names the
/// loopback interface: `localhost` (any case), an address in `127.0.0.0/8`, or `[::1]`.
pub fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        // `[v6]` or `[v6]:port`.
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
            return false;
        }
        return v6.parse::<Ipv6Addr>().is_ok_and(|ip| ip.is_loopback());
    } else {
        match host.split_once(':') {
            Some((name, port)) if is_port(port) => name,
            Some(_) => return false,
            None => host,
        }
    };
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
}

/// Whether `origin` (an `Origin` header value) is `http://` or `https://` followed by a
/// loopback host of [`is_loopback_host`]; the opaque origin `null` is not.
pub fn is_loopback_origin(origin: &str) -> bool {
    let Some((scheme, host)) = origin.split_once("://") else {
        return false;
    };
    (scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https"))
        && is_loopback_host(host)
}

/// A port: 1 to 5 ASCII digits that fit in 16 bits.
fn is_port(port: &str) -> bool {
    !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_ok()
}

/// The token of an `Authorization: Bearer <token>` header.
/// `bytes` without the spaces and tabs at either end.
fn trim_blanks(bytes: &[u8]) -> &[u8] {
    let blank = |b: &u8| *b == b' ' || *b == b'\t';
    let start = bytes.iter().position(|b| !blank(b)).unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !blank(b))
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

fn bearer(header: Option<&str>) -> Option<&str> {
    let value = header?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"an-auth-unit-test-secret-of-32-bytes";

    fn token(role: Role, devices: Option<&[&str]>, exp_offset: i64) -> String {
        Claims {
            sub: "alice".into(),
            role,
            devices: devices.map(|d| d.iter().map(|s| (*s).to_owned()).collect()),
            exp: unix_now().saturating_add_signed(exp_offset),
        }
        .encode(SECRET)
        .unwrap()
    }

    fn upgrade(authorization: Option<&str>, query: &[(&str, &str)]) -> UpgradeRequest {
        UpgradeRequest {
            authorization: authorization.map(str::to_owned),
            query: query
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    fn lock(id: &str) -> DeviceId {
        DeviceId::new(id).unwrap()
    }

    #[test]
    fn a_bridge_token_bridges_only_its_devices() {
        let auth = Authenticator::jwt(SECRET);
        let t = token(Role::Bridge, Some(&["lock-1", "lock-2"]), 60);
        let header = format!("Bearer {t}");
        let id = auth
            .authenticate_ws(&upgrade(Some(&header), &[("deviceId", "lock-1")]))
            .unwrap();
        assert_eq!(id.principal.role, Role::Bridge);
        assert_eq!(id.initial_devices, vec![lock("lock-1")]);
        assert!(id.principal.devices.allows(&lock("lock-2")));
        let err = auth
            .authenticate_ws(&upgrade(Some(&header), &[("deviceId", "lock-9")]))
            .unwrap_err();
        assert_eq!(err, AuthError::DeviceNotAllowed(lock("lock-9")));
        assert_eq!(err.http_status(), 403);
    }

    fn hello(credentials: Credentials, devices: &[&str]) -> Hello {
        Hello {
            credentials,
            device_ids: devices.iter().map(|d| lock(d)).collect(),
        }
    }

    #[test]
    fn a_hello_is_checked_as_the_websocket_upgrade_and_is_always_a_bridge() {
        let auth = Authenticator::jwt(SECRET);
        let as_token = |t: String| Credentials::Token(bridge_protocol::Token::new(t).unwrap());
        let t = token(Role::Bridge, Some(&["lock-1", "lock-2"]), 60);
        let id = auth
            .authenticate_hello(&hello(as_token(t.clone()), &["lock-1"]))
            .unwrap();
        assert_eq!(id.principal.role, Role::Bridge);
        assert_eq!(id.initial_devices, vec![lock("lock-1")]);
        assert_eq!(
            auth.authenticate_hello(&hello(as_token(t), &["lock-9"])),
            Err(AuthError::DeviceNotAllowed(lock("lock-9")))
        );
        // Over MQTT only bridges connect: a user token is a role it may not have.
        let user = token(Role::User, Some(&["lock-1"]), 60);
        let err = auth
            .authenticate_hello(&hello(as_token(user), &[]))
            .unwrap_err();
        assert!(
            matches!(
                err,
                AuthError::WrongRole {
                    role: Role::User,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(err.code(), ErrorCode::Forbidden);
        // Expired, forged, or a development identity in authenticated mode: unauthorized.
        let expired = token(Role::Bridge, Some(&["lock-1"]), -10);
        assert_eq!(
            auth.authenticate_hello(&hello(as_token(expired), &[])),
            Err(AuthError::Expired)
        );
        let dev = Credentials::UserId(UserId::new("alice").unwrap());
        assert_eq!(
            auth.authenticate_hello(&hello(dev.clone(), &[]))
                .unwrap_err()
                .code(),
            ErrorCode::Unauthorized
        );
        // Development mode: the userId, and a bridge even without devices.
        let id = Authenticator::development()
            .authenticate_hello(&hello(dev, &[]))
            .unwrap();
        assert_eq!(id.principal.role, Role::Bridge);
        assert_eq!(id.principal.subject, "alice");
        assert_eq!(id.principal.devices, DeviceGrant::All);
    }

    #[test]
    fn the_token_may_come_as_a_query_parameter() {
        let auth = Authenticator::jwt(SECRET);
        let t = token(Role::User, Some(&["lock-1"]), 60);
        let id = auth
            .authenticate_ws(&upgrade(None, &[("token", &t)]))
            .unwrap();
        assert_eq!(id.principal.role, Role::User);
    }

    #[test]
    fn query_parameters_cannot_raise_a_user_token_to_a_bridge() {
        let auth = Authenticator::jwt(SECRET);
        let t = token(Role::User, Some(&["lock-1"]), 60);
        let id = auth
            .authenticate_ws(&upgrade(None, &[("token", &t), ("deviceId", "lock-1")]))
            .unwrap();
        assert_eq!(id.principal.role, Role::User);
        assert!(id.initial_devices.is_empty());
    }

    #[test]
    fn missing_malformed_forged_and_expired_tokens_are_401() {
        let auth = Authenticator::jwt(SECRET);
        let cases = [
            (upgrade(None, &[]), "missing"),
            (upgrade(Some("Bearer not.a.jwt"), &[]), "malformed"),
            (upgrade(Some("Basic abc"), &[]), "wrong scheme"),
        ];
        for (req, what) in cases {
            assert_eq!(
                auth.authenticate_ws(&req).unwrap_err().http_status(),
                401,
                "{what}"
            );
        }
        let forged = Claims {
            sub: "mallory".into(),
            role: Role::Service,
            devices: None,
            exp: unix_now() + 60,
        }
        .encode(b"other-secret")
        .unwrap();
        assert_eq!(
            auth.authenticate_service(Some(&format!("Bearer {forged}"))),
            Err(AuthError::BadSignature)
        );
        let expired = token(Role::Service, None, -10);
        assert_eq!(
            auth.authenticate_service(Some(&format!("Bearer {expired}"))),
            Err(AuthError::Expired)
        );
    }

    fn services_of(auth: &Authenticator) -> &ServiceTokens {
        match &auth.mode {
            Mode::Jwt { services, .. } => services,
            Mode::Development => unreachable!("a jwt authenticator"),
        }
    }

    #[test]
    fn a_verified_service_token_is_remembered_but_forged_and_other_roles_are_not() {
        let auth = Authenticator::jwt(SECRET);
        let service = format!("Bearer {}", token(Role::Service, None, 60));
        assert!(auth.check_service(Some(&service)).is_ok());
        assert_eq!(services_of(&auth).len(), 1);
        // A second call answers from the cache, with the same principal.
        assert_eq!(
            auth.authenticate_service(Some(&service)).unwrap().subject,
            "alice"
        );
        assert_eq!(services_of(&auth).len(), 1);

        let user = format!("Bearer {}", token(Role::User, None, 60));
        assert_eq!(
            auth.check_service(Some(&user)).unwrap_err().http_status(),
            403
        );
        let forged = Claims {
            sub: "mallory".into(),
            role: Role::Service,
            devices: None,
            exp: unix_now() + 60,
        }
        .encode(b"some-other-secret-of-at-least-32-bytes")
        .unwrap();
        let forged = format!("Bearer {forged}");
        for _ in 0..2 {
            assert_eq!(
                auth.check_service(Some(&forged)).unwrap_err().http_status(),
                401
            );
        }
        let expired = format!("Bearer {}", token(Role::Service, None, -5));
        assert_eq!(
            auth.check_service(Some(&expired))
                .unwrap_err()
                .http_status(),
            401
        );
        assert_eq!(services_of(&auth).len(), 1, "only the valid service token");
        // Clones share the cache: the router's state and the server's are one.
        assert!(auth.clone().check_service(Some(&service)).is_ok());
        assert_eq!(services_of(&auth.clone()).len(), 1);
    }

    #[test]
    fn a_remembered_token_expires_at_its_exp_as_a_verified_one_does() {
        let cache = ServiceTokens::default();
        let principal = Principal {
            subject: "backend".into(),
            role: Role::Service,
            devices: DeviceGrant::All,
            expires_at: Some(1_000),
        };
        cache.remember("t", &principal, 900);
        assert!(cache.holds(b"t", 1_000), "valid through its exp second");
        assert_eq!(cache.lookup("t", 1_000), Some(principal));
        assert!(!cache.holds(b"t", 1_001));
        assert_eq!(cache.lookup("t", 1_001), None);
        assert!(!cache.holds(b"u", 900), "never verified");
    }

    #[test]
    fn the_token_cache_stays_bounded_dropping_expired_entries_first() {
        let cache = ServiceTokens::default();
        let principal = |exp| Principal {
            subject: "backend".into(),
            role: Role::Service,
            devices: DeviceGrant::All,
            expires_at: Some(exp),
        };
        // Half expire at 100, half live on.
        for i in 0..ServiceTokens::CAPACITY {
            let exp = if i % 2 == 0 { 100 } else { 10_000 };
            cache.remember(&format!("t{i}"), &principal(exp), 50);
        }
        assert_eq!(cache.len(), ServiceTokens::CAPACITY);
        cache.remember("late", &principal(10_000), 200);
        assert_eq!(cache.len(), ServiceTokens::CAPACITY / 2 + 1);
        assert!(cache.holds(b"t1", 200) && cache.holds(b"late", 200));
        // Full of live tokens: emptied rather than grown.
        for i in 0..ServiceTokens::CAPACITY {
            cache.remember(&format!("n{i}"), &principal(10_000), 200);
        }
        assert!(cache.len() <= ServiceTokens::CAPACITY);
        assert!(cache.holds(format!("n{}", ServiceTokens::CAPACITY - 1).as_bytes(), 200));
    }

    #[test]
    fn the_http_api_needs_a_service_token() {
        let auth = Authenticator::jwt(SECRET);
        let user = token(Role::User, None, 60);
        let err = auth
            .authenticate_service(Some(&format!("Bearer {user}")))
            .unwrap_err();
        assert_eq!(err.http_status(), 403);
        let service = token(Role::Service, None, 60);
        let p = auth
            .authenticate_service(Some(&format!("bearer {service}")))
            .unwrap();
        assert_eq!(p.devices, DeviceGrant::All);
    }

    #[test]
    fn service_tokens_may_not_open_websockets() {
        let auth = Authenticator::jwt(SECRET);
        let t = token(Role::Service, None, 60);
        assert_eq!(
            auth.authenticate_ws(&upgrade(None, &[("token", &t)]))
                .unwrap_err()
                .http_status(),
            403
        );
    }

    #[test]
    fn development_mode_reads_identity_from_the_query() {
        let auth = Authenticator::development();
        let user = auth
            .authenticate_ws(&upgrade(None, &[("userId", "u1")]))
            .unwrap();
        assert_eq!(user.principal.role, Role::User);
        let bridge = auth
            .authenticate_ws(&upgrade(
                None,
                &[
                    ("userId", "u1"),
                    ("deviceId", "a"),
                    ("deviceId", "b"),
                    ("deviceId", "a"),
                ],
            ))
            .unwrap();
        assert_eq!(bridge.principal.role, Role::Bridge);
        assert_eq!(bridge.initial_devices, vec![lock("a"), lock("b")]);
        assert!(bridge.principal.devices.allows(&lock("anything")));
        assert_eq!(
            auth.authenticate_ws(&upgrade(None, &[]))
                .unwrap_err()
                .http_status(),
            401
        );
        assert_eq!(
            auth.authenticate_ws(&upgrade(None, &[("userId", "u"), ("deviceId", "")]))
                .unwrap_err()
                .http_status(),
            400
        );
        assert!(auth.authenticate_service(None).is_ok());
    }

    /// Signs arbitrary claims, valid or not, with [`SECRET`].
    fn raw_token(claims: &serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    }

    #[test]
    fn an_exp_past_9999_or_not_an_integer_is_malformed_not_a_panic() {
        let auth = Authenticator::jwt(SECRET);
        for exp in [
            serde_json::json!(u64::MAX),
            serde_json::json!(u64::MAX - 1),
            serde_json::json!(Claims::MAX_EXP + 1),
            serde_json::json!(1.0e30),
            serde_json::json!("4102444800"),
            serde_json::json!(-1),
        ] {
            let t = raw_token(&serde_json::json!({"sub":"alice","role":"service","exp":exp}));
            let err = auth
                .authenticate_service(Some(&format!("Bearer {t}")))
                .unwrap_err();
            assert!(matches!(err, AuthError::Malformed(_)), "exp {exp}: {err:?}");
            assert_eq!(err.http_status(), 401);
        }
        let t =
            raw_token(&serde_json::json!({"sub":"alice","role":"service","exp":Claims::MAX_EXP}));
        assert!(
            auth.authenticate_service(Some(&format!("Bearer {t}")))
                .is_ok()
        );
    }

    #[test]
    fn a_sub_that_is_not_a_valid_user_id_is_malformed() {
        let auth = Authenticator::jwt(SECRET);
        let long = "u".repeat(129);
        for sub in ["", long.as_str(), "ali\u{0}ce", "bob\n", "\u{7f}"] {
            let t = raw_token(&serde_json::json!({"sub":sub,"role":"user","exp":unix_now() + 60}));
            let err = auth
                .authenticate_ws(&upgrade(None, &[("token", &t)]))
                .unwrap_err();
            assert!(
                matches!(err, AuthError::Malformed(_)),
                "sub {sub:?}: {err:?}"
            );
            assert_eq!(err.http_status(), 401);
        }
        let t = raw_token(
            &serde_json::json!({"sub":"u".repeat(128),"role":"user","exp":unix_now() + 60}),
        );
        assert!(
            auth.authenticate_ws(&upgrade(None, &[("token", &t)]))
                .is_ok()
        );
    }

    #[test]
    fn loopback_hosts_are_localhost_127_slash_8_and_v6_one_with_any_port() {
        for host in [
            "localhost",
            "LocalHost:8080",
            "127.0.0.1",
            "127.0.0.1:8080",
            "127.1.2.3:1",
            "[::1]",
            "[::1]:65535",
            "[0:0:0:0:0:0:0:1]:80",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "",
            "evil.example",
            "localhost.evil.example",
            "evil.localhost",
            "127.0.0.1.nip.io",
            "localhost:",
            "localhost:65536",
            "localhost:80:80",
            "localhost@evil",
            "128.0.0.1",
            "0.0.0.0:8080",
            "10.0.0.1",
            "2130706433",
            "[::]",
            "[::ffff:127.0.0.1]",
            "[::1",
            "[::1]x",
            "::1",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
        assert!(is_loopback_origin("http://localhost:3000"));
        assert!(is_loopback_origin("https://127.0.0.1"));
        assert!(is_loopback_origin("http://[::1]:8080"));
        for origin in [
            "null",
            "http://evil.example",
            "https://evil.example:443",
            "file://",
            "chrome-extension://localhost",
            "http://localhost/path",
            "localhost",
        ] {
            assert!(!is_loopback_origin(origin), "{origin}");
        }
    }

    #[test]
    fn development_mode_refuses_a_foreign_host_or_origin_and_jwt_mode_does_not_check() {
        let dev = Authenticator::development();
        assert_eq!(
            dev.check_loopback(&[Some("127.0.0.1:8080")], [None; 0]),
            Ok(())
        );
        assert_eq!(
            dev.check_loopback(&[Some("localhost:8080")], [Some("http://localhost:5173")]),
            Ok(())
        );
        assert_eq!(dev.check_loopback(&[], [None; 0]), Ok(()));
        let forbidden_host = Err(AuthError::NotLoopback { header: "Host" });
        assert_eq!(
            dev.check_loopback(&[Some("rebound.evil.example:8080")], [None; 0]),
            forbidden_host
        );
        assert_eq!(dev.check_loopback(&[None], [None; 0]), forbidden_host);
        assert_eq!(
            dev.check_loopback(&[Some("localhost"), Some("evil.example")], [None; 0]),
            forbidden_host
        );
        let forbidden_origin = Err(AuthError::NotLoopback { header: "Origin" });
        assert_eq!(
            dev.check_loopback(&[Some("localhost")], [Some("https://evil.example")]),
            forbidden_origin
        );
        assert_eq!(
            dev.check_loopback(&[Some("localhost")], [Some("http://localhost"), None]),
            forbidden_origin
        );
        assert_eq!(
            AuthError::NotLoopback { header: "Origin" }.http_status(),
            403
        );
        let jwt = Authenticator::jwt(SECRET);
        assert_eq!(
            jwt.check_loopback(
                &[Some("bridge.example.com")],
                [Some("https://app.example.com")]
            ),
            Ok(())
        );
    }

    proptest::proptest! {
        /// The token map with [`TokenHashing`] answers every lookup as one with the standard
        /// hashing, for any tokens stored and looked up (near-duplicates included: a
        /// stored token with a byte changed, cut short or lengthened).
        #[test]
        fn token_hashing_finds_what_the_standard_hashing_finds(
            stored in proptest::collection::vec("[ -~]{0,40}", 0..24),
            edits in proptest::collection::vec((0usize..24, 0usize..48, proptest::prelude::any::<u8>()), 0..24),
        ) {
            let mut ours: HashMap<Box<str>, usize, TokenHashing> = HashMap::default();
            let mut std_map: HashMap<Box<str>, usize> = HashMap::new();
            for (i, token) in stored.iter().enumerate() {
                ours.insert(token.as_str().into(), i);
                std_map.insert(token.as_str().into(), i);
            }
            let mut probes: Vec<String> = stored.clone();
            for (which, at, byte) in edits {
                let Some(token) = stored.get(which) else { continue };
                let mut bytes = token.clone().into_bytes();
                match at % 3 {
                    0 if !bytes.is_empty() => {
                        let len = bytes.len();
                        bytes[at % len] = byte % 95 + 32;
                    }
                    1 => bytes.truncate(at % (bytes.len() + 1)),
                    _ => bytes.push(byte % 95 + 32),
                }
                probes.push(String::from_utf8(bytes).expect("printable ASCII"));
            }
            for probe in &probes {
                proptest::prop_assert_eq!(ours.get(probe.as_str()), std_map.get(probe.as_str()), "{:?}", probe);
            }
            proptest::prop_assert_eq!(ours.len(), std_map.len());
        }
    }

    #[test]
    fn token_hashing_spreads_tokens_that_differ_in_one_byte_or_in_length() {
        use std::hash::BuildHasher as _;
        let hashing = TokenHashing::default();
        let base = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJiYWNrZW5kIn0.signature0123456789";
        let mut hashes = HashSet::new();
        for at in 0..base.len() {
            let mut bytes = base.as_bytes().to_vec();
            bytes[at] ^= 1;
            hashes.insert(hashing.hash_one(std::str::from_utf8(&bytes).unwrap()));
        }
        for len in 0..=base.len() {
            hashes.insert(hashing.hash_one(&base[..len]));
        }
        // Every one distinct (a weak hash would collide on some), and hashbrown's 7 top bits
        // vary too.
        assert_eq!(hashes.len(), 2 * base.len() + 1);
        let tops: HashSet<u64> = hashes.iter().map(|h| h >> 57).collect();
        assert!(tops.len() > 32, "{} distinct top bits", tops.len());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2048))]

        /// `holds_service_token` on a header's bytes, then `check_service` on its text when
        /// it says no (what the command route does), answers what `check_service` alone
        /// answers, for headers made of every kind of scheme, blank, token and stray byte.
        #[test]
        fn the_service_token_read_from_bytes_answers_as_check_service(
            lead in proptest::collection::vec(proptest::sample::select(vec![" ", "\t", "\x0b", "\u{a0}", "\x01"]), 0..3),
            scheme in proptest::sample::select(vec!["Bearer", "bearer", "BEARER", "bEaReR", "Bearer\x7f", "Basic", "", "Bearerx", "Bear"]),
            gap in proptest::sample::select(vec![" ", "  ", "\t", " \t", "", "\u{a0}", " \x0b"]),
            // The remembered token half of the time.
            token in proptest::prop_oneof![proptest::strategy::Just(0usize), 0usize..7],
            trail in proptest::collection::vec(proptest::sample::select(vec![" ", "\t", "\x0c", "\u{ff}"]), 0..3),
        ) {
            let auth = Authenticator::jwt(SECRET);
            let service = token_of(Role::Service, 60);
            // Remembered: verified once.
            let remembered = auth.check_service(Some(&format!("Bearer {service}")));
            proptest::prop_assert!(remembered.is_ok());
            let mut changed = service.clone().into_bytes();
            let last = changed.len() - 1;
            changed[last] ^= 1;
            let changed = String::from_utf8(changed).unwrap();
            let tokens = [
                service.clone(),
                changed,
                format!("{service}\x7f"),
                String::new(),
                token_of(Role::User, 60),
                service[..service.len() - 1].to_owned(),
                format!("{service}\u{e9}"),
            ];
            let text = format!("{}{scheme}{gap}{}{}", lead.concat(), tokens[token], trail.concat());
            // Only what a header can hold (hyper refuses the other control bytes).
            let Ok(header) = axum::http::HeaderValue::from_bytes(text.as_bytes()) else {
                return Ok(());
            };
            let slow = auth.check_service(header.to_str().ok());
            let fast = if auth.holds_service_token(header.as_bytes()) {
                Ok(())
            } else {
                auth.check_service(header.to_str().ok())
            };
            proptest::prop_assert_eq!(fast, slow, "{:?}", text);
        }
    }

    impl Authenticator {
        /// What the shared map answers for `token` at `now`.
        fn services_hold(&self, token: &str, now: u64) -> bool {
            match &self.mode {
                Mode::Jwt { services, .. } => services.holds(token.as_bytes(), now),
                Mode::Development => false,
            }
        }
    }

    fn token_of(role: Role, exp_offset: i64) -> String {
        token(role, None, exp_offset)
    }

    #[test]
    fn the_service_token_is_read_from_bytes_only_when_remembered_and_bearer() {
        let auth = Authenticator::jwt(SECRET);
        let service = token_of(Role::Service, 60);
        let header = format!("Bearer {service}");
        assert!(
            !auth.holds_service_token(header.as_bytes()),
            "not verified yet"
        );
        assert!(auth.check_service(Some(&header)).is_ok());
        assert!(auth.holds_service_token(header.as_bytes()));
        assert!(auth.holds_service_token(format!(" \tbearer \t{service}\t ").as_bytes()));
        assert!(!auth.holds_service_token(format!("Basic {service}").as_bytes()));
        assert!(!auth.holds_service_token(format!("Bearer\x0b{service}").as_bytes()));
        assert!(!auth.holds_service_token(format!("\x0bBearer {service}").as_bytes()));
        assert!(!Authenticator::development().holds_service_token(header.as_bytes()));
    }

    #[test]
    fn a_connection_holds_the_header_it_was_accepted_with_until_the_token_expires() {
        let auth = Authenticator::jwt(SECRET);
        let service = token_of(Role::Service, 60);
        let header = format!("Bearer {service}");
        let now = unix_now();
        let exp = now + 60;
        let mut connection = HeldToken::default();
        // Not verified yet: not held, and nothing is kept.
        assert!(!auth.holds_service_token_at(header.as_bytes(), &mut connection, now));
        assert!(connection.held.is_none());
        assert!(auth.check_service(Some(&header)).is_ok());
        assert!(auth.holds_service_token_at(header.as_bytes(), &mut connection, now));
        assert_eq!(connection.held, Some(exp));
        // Answered from the connection, to the second of `exp`: the shared map's answer.
        for at in [now, exp] {
            assert!(auth.holds_service_token_at(header.as_bytes(), &mut connection, at));
            assert!(auth.services_hold(&service, at));
        }
        assert!(!auth.holds_service_token_at(header.as_bytes(), &mut connection, exp + 1));
        assert!(!auth.services_hold(&service, exp + 1));
    }

    #[test]
    fn a_connection_answers_another_header_as_the_shared_map_does() {
        let auth = Authenticator::jwt(SECRET);
        let service = token_of(Role::Service, 60);
        let header = format!("Bearer {service}");
        assert!(auth.check_service(Some(&header)).is_ok());
        let now = unix_now();
        let mut connection = HeldToken::default();
        assert!(auth.holds_service_token_at(header.as_bytes(), &mut connection, now));
        let mut changed = header.clone().into_bytes();
        let last = changed.len() - 1;
        changed[last] ^= 1;
        let user = format!("Bearer {}", token_of(Role::User, 60));
        let basic = format!("Basic {service}");
        let others: [&[u8]; 5] = [
            &changed,
            user.as_bytes(),
            basic.as_bytes(),
            &header.as_bytes()[..header.len() - 1],
            b"",
        ];
        for other in others {
            assert!(!auth.holds_service_token_at(other, &mut connection, now));
            // The held header is still the accepted one.
            assert!(auth.holds_service_token_at(header.as_bytes(), &mut connection, now));
        }
        // The same token written otherwise is another header, held once looked up.
        let spaced = format!(" bearer  {service} ");
        assert!(auth.holds_service_token_at(spaced.as_bytes(), &mut connection, now));
        assert_eq!(connection.header, spaced.as_bytes());
        // Development mode holds nothing.
        let mut connection = HeldToken::default();
        let development = Authenticator::development();
        assert!(!development.holds_service_token_at(header.as_bytes(), &mut connection, now));
    }

    #[test]
    fn a_header_longer_than_a_connection_keeps_is_looked_up_each_time() {
        let auth = Authenticator::jwt(SECRET);
        let service = token_of(Role::Service, 60);
        let header = format!("Bearer {service}{}", " ".repeat(HeldToken::MAX_HEADER));
        assert!(auth.check_service(Some(&header)).is_ok());
        let mut connection = HeldToken::default();
        assert!(auth.holds_service_token_at(header.as_bytes(), &mut connection, unix_now()));
        assert!(connection.held.is_none() && connection.header.is_empty());
    }
}
