//! Bridges over MQTT (PROTOCOL.md section 6, version 1.1).
//!
//! Over MQTT a bridge publishes the frames of section 3 on `P/b/{bridgeId}/up` and reads
//! the server's on `P/b/{bridgeId}/down`. Three frames exist only there: `hello` (the
//! bridge's first frame, standing for the WebSocket upgrade), `welcome` (the server's answer)
//! and `bye` (the bridge's will, or its goodbye). Over WebSocket these stay `unknown_type`:
//! [`BridgeToServer::decode`](crate::BridgeToServer::decode) and
//! [`ServerToBridge::decode`](crate::ServerToBridge::decode) refuse them, and
//! [`MqttBridgeFrame::decode`] / [`MqttServerFrame::decode`] are the MQTT side's entry points.

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Serialize, Serializer};

use crate::frames::{TypeOnly, encoders, tagged};
use crate::{BridgeToServer, DeviceId, ServerToBridge, UserId, ValueError};

/// Longest accepted bridge id, in characters.
pub const MAX_BRIDGE_ID_CHARS: usize = 64;

/// The id a bridge picks for its MQTT topics: 1 to 64 characters of `A-Z a-z 0-9 _ -`.
///
/// It names topics only; the token alone decides who the bridge is (PROTOCOL.md 6).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BridgeId(Arc<str>);

impl BridgeId {
    /// Validates `s` as a bridge id.
    pub fn new(s: &str) -> Result<Self, ValueError> {
        const WHAT: &str = "bridgeId";
        if s.is_empty() {
            return Err(ValueError::Empty { what: WHAT });
        }
        if s.len() > MAX_BRIDGE_ID_CHARS {
            return Err(ValueError::TooLong {
                what: WHAT,
                max: MAX_BRIDGE_ID_CHARS,
            });
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(ValueError::ForbiddenChar {
                what: WHAT,
                allowed: "the characters A-Z a-z 0-9 _ -",
            });
        }
        Ok(Self(Arc::from(s)))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The topic the bridge publishes on: `{prefix}/b/{bridgeId}/up`.
    pub fn up_topic(&self, prefix: &str) -> String {
        format!("{prefix}/b/{}/up", self.0)
    }

    /// The topic the server publishes to the bridge on: `{prefix}/b/{bridgeId}/down`.
    pub fn down_topic(&self, prefix: &str) -> String {
        format!("{prefix}/b/{}/down", self.0)
    }

    /// The bridge id of an `up` topic under `prefix`, or `None` when `topic` is not one
    /// (another prefix, another shape, or an invalid id).
    pub fn from_up_topic(prefix: &str, topic: &str) -> Option<Self> {
        let id = topic
            .strip_prefix(prefix)?
            .strip_prefix("/b/")?
            .strip_suffix("/up")?;
        Self::new(id).ok()
    }
}

impl Borrow<str> for BridgeId {
    fn borrow(&self) -> &str {
        &self.0
    }
}
impl AsRef<str> for BridgeId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}
impl fmt::Debug for BridgeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}
impl fmt::Display for BridgeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl FromStr for BridgeId {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}
impl Serialize for BridgeId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

/// A bearer token (a JWT) as a `hello` carries it.
///
/// Opaque here: whether it is well formed, signed and current is the authenticator's
/// decision (`unauthorized` otherwise). Its `Debug` form does not show it, so that logging
/// a frame never leaks a credential.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// Wraps a token; `None` for an empty string, which counts as no token.
    pub fn new(token: impl Into<String>) -> Option<Self> {
        let token = token.into();
        (!token.is_empty()).then_some(Self(token))
    }

    /// The token's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token(<{} bytes>)", self.0.len())
    }
}

impl Serialize for Token {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

/// Who a `hello` says the bridge is: a token, or in development mode a user id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub enum Credentials {
    /// `token`: a JWT, as the WebSocket's `Authorization` header or `?token=` carries it.
    Token(Token),
    /// `userId`: development mode's identity, as the WebSocket's `?userId=` carries it.
    UserId(UserId),
}

/// `hello` (bridge → server over MQTT): the bridge's first frame, the equivalent of the
/// WebSocket upgrade and its query. The bridge id is the topic's, not the frame's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Hello {
    /// Exactly one of `token` and `userId` on the wire.
    #[serde(flatten)]
    pub credentials: Credentials,
    /// The devices the bridge relays for from the start (the `deviceId` query parameters),
    /// without duplicates, in the order first given.
    pub device_ids: Vec<DeviceId>,
}

/// Frames a bridge publishes on its `up` topic.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MqttBridgeFrame {
    /// `hello`: opens (or replaces) the bridge id's session.
    Hello(Hello),
    /// `bye`: ends the session as a WebSocket close does (also the MQTT will message).
    Bye,
    /// Any frame a bridge may send over WebSocket.
    Frame(BridgeToServer),
}

/// Frames the server publishes on a bridge's `down` topic.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MqttServerFrame {
    /// `welcome`: the `hello` was accepted; the session is live.
    Welcome,
    /// Any frame the server sends a bridge over WebSocket (error frames included, such as
    /// the `unauthorized` answer to a refused `hello`).
    Frame(ServerToBridge),
}

impl From<BridgeToServer> for MqttBridgeFrame {
    fn from(frame: BridgeToServer) -> Self {
        Self::Frame(frame)
    }
}

impl From<ServerToBridge> for MqttServerFrame {
    fn from(frame: ServerToBridge) -> Self {
        Self::Frame(frame)
    }
}

impl Serialize for MqttBridgeFrame {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Hello(f) => tagged(s, "hello", f),
            Self::Bye => TypeOnly { ty: "bye" }.serialize(s),
            Self::Frame(f) => f.serialize(s),
        }
    }
}

impl Serialize for MqttServerFrame {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Welcome => TypeOnly { ty: "welcome" }.serialize(s),
            Self::Frame(f) => f.serialize(s),
        }
    }
}

encoders!(MqttBridgeFrame, MqttServerFrame);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_ids_are_1_to_64_topic_safe_characters() {
        assert!(BridgeId::new("phone_7-A").is_ok());
        assert!(BridgeId::new(&"a".repeat(64)).is_ok());
        assert_eq!(
            BridgeId::new(""),
            Err(ValueError::Empty { what: "bridgeId" })
        );
        assert!(matches!(
            BridgeId::new(&"a".repeat(65)),
            Err(ValueError::TooLong { max: 64, .. })
        ));
        // Topic separators, wildcards, spaces and non-ASCII letters would break the topic.
        for bad in ["a/b", "a+", "#", "a b", "é", "a.b"] {
            assert!(
                matches!(BridgeId::new(bad), Err(ValueError::ForbiddenChar { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn bridge_ids_name_their_topics() {
        let id = BridgeId::new("phone-1").unwrap();
        assert_eq!(id.up_topic("bridge"), "bridge/b/phone-1/up");
        assert_eq!(id.down_topic("bridge"), "bridge/b/phone-1/down");
        assert_eq!(
            BridgeId::from_up_topic("bridge", "bridge/b/phone-1/up"),
            Some(id)
        );
        assert_eq!(
            BridgeId::from_up_topic("bridge", "bridge/b/phone-1/down"),
            None
        );
        assert_eq!(
            BridgeId::from_up_topic("other", "bridge/b/phone-1/up"),
            None
        );
        assert_eq!(BridgeId::from_up_topic("bridge", "bridge/b/a/b/up"), None);
        assert_eq!(BridgeId::from_up_topic("bridge", "bridge/b//up"), None);
    }

    #[test]
    fn a_token_never_shows_in_debug_output() {
        let token = Token::new("eyJhbGciOiJIUzI1NiJ9.e30.sig").unwrap();
        assert!(!format!("{token:?}").contains("eyJ"));
        assert_eq!(Token::new(""), None);
    }
}
