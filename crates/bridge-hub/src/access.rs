//! Who a connection is, what it may do, and what a user connection starts subscribed to.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bridge_protocol::{DeviceId, Role};

/// A user id (a token's `sub`, or `?userId=` in development mode). Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(Arc<str>);

impl UserId {
    /// Wraps a user id.
    pub fn new(id: &str) -> Self {
        Self(Arc::from(id))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for UserId {
    fn from(id: &str) -> Self {
        Self::new(id)
    }
}

/// The devices a connection's credentials grant (PROTOCOL.md 1): a token's `devices`, or
/// every device in development mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceAccess {
    /// Every device (development mode, or a `service` token).
    All,
    /// Only these devices.
    Only(Arc<HashSet<DeviceId>>),
}

impl DeviceAccess {
    /// Access to exactly `devices`.
    pub fn only(devices: impl IntoIterator<Item = DeviceId>) -> Self {
        Self::Only(Arc::new(devices.into_iter().collect()))
    }

    /// No device at all.
    pub fn none() -> Self {
        Self::Only(Arc::default())
    }

    /// Whether `device` is granted.
    pub fn allows(&self, device: &DeviceId) -> bool {
        match self {
            Self::All => true,
            Self::Only(set) => set.contains(device),
        }
    }
}

/// Who is on the other end of a connection, as the server established it before the upgrade.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    role: Role,
    user_id: UserId,
    devices: Vec<DeviceId>,
    access: DeviceAccess,
    expires_at: Option<SystemTime>,
}

impl ConnectionInfo {
    /// A user connection (a browser tab or app) with the devices it may watch and command.
    pub fn user(user_id: UserId, access: DeviceAccess) -> Self {
        Self {
            role: Role::User,
            user_id,
            devices: Vec::new(),
            access,
            expires_at: None,
        }
    }

    /// A bridge connection relaying for `devices` from the start (`?deviceId=`, already
    /// checked by the server), that may later claim the devices `access` grants.
    pub fn bridge(user_id: UserId, devices: Vec<DeviceId>, access: DeviceAccess) -> Self {
        Self {
            role: Role::Bridge,
            user_id,
            devices,
            access,
            expires_at: None,
        }
    }

    /// Closes the connection with 1008 at the first keepalive tick after `expires_at` (a
    /// token's `exp`).
    pub fn with_expiry(mut self, expires_at: SystemTime) -> Self {
        self.expires_at = Some(expires_at);
        self
    }

    /// `user` or `bridge`.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Whose connection it is.
    pub fn user_id(&self) -> &UserId {
        &self.user_id
    }

    /// The devices a bridge named when it connected (empty for users).
    pub fn connect_devices(&self) -> &[DeviceId] {
        &self.devices
    }

    /// The devices the credentials grant.
    pub fn access(&self) -> &DeviceAccess {
        &self.access
    }

    /// When the credentials expire, if they do.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.expires_at
    }
}

/// Decides what a connection may do with a device. The default methods consult the
/// connection's [`DeviceAccess`]; override them to ask a database or an ACL service.
///
/// Called from the connection's read pump: keep it quick, the connection reads nothing
/// else meanwhile.
#[async_trait]
pub trait AccessPolicy: Send + Sync + 'static {
    /// May this bridge connection claim `device` with `ble_status`?
    async fn may_bridge(&self, connection: &ConnectionInfo, device: &DeviceId) -> bool {
        connection.access().allows(device)
    }

    /// May this user connection `subscribe` to `device`?
    async fn may_subscribe(&self, connection: &ConnectionInfo, device: &DeviceId) -> bool {
        connection.access().allows(device)
    }

    /// May this user connection send a `command` for `device`?
    async fn may_command(&self, connection: &ConnectionInfo, device: &DeviceId) -> bool {
        connection.access().allows(device)
    }
}

/// The [`AccessPolicy`] that grants exactly what each connection's [`DeviceAccess`] grants.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrantedAccess;

impl AccessPolicy for GrantedAccess {}

/// Where a user connection's initial subscriptions come from (the toolkit's subscription
/// loader). The embedding application implements it, for example with a database query.
#[async_trait]
pub trait SubscriptionSource: Send + Sync + 'static {
    /// The devices `connection` starts subscribed to. Not checked against the
    /// [`AccessPolicy`]: the source is trusted.
    async fn initial_subscriptions(&self, connection: &ConnectionInfo) -> Vec<DeviceId>;
}

/// A [`SubscriptionSource`] that gives every user connection the same fixed list (empty by
/// default).
#[derive(Debug, Clone, Default)]
pub struct FixedSubscriptions(Arc<[DeviceId]>);

impl FixedSubscriptions {
    /// Every user connection starts subscribed to `devices`.
    pub fn new(devices: impl IntoIterator<Item = DeviceId>) -> Self {
        Self(devices.into_iter().collect())
    }
}

#[async_trait]
impl SubscriptionSource for FixedSubscriptions {
    async fn initial_subscriptions(&self, _connection: &ConnectionInfo) -> Vec<DeviceId> {
        self.0.to_vec()
    }
}

/// A [`SubscriptionSource`] that subscribes each user connection to the devices its
/// credentials name (a token's `devices`); nothing for [`DeviceAccess::All`].
#[derive(Debug, Clone, Copy, Default)]
pub struct GrantedSubscriptions;

#[async_trait]
impl SubscriptionSource for GrantedSubscriptions {
    async fn initial_subscriptions(&self, connection: &ConnectionInfo) -> Vec<DeviceId> {
        match connection.access() {
            DeviceAccess::All => Vec::new(),
            DeviceAccess::Only(set) => {
                let mut devices: Vec<DeviceId> = set.iter().cloned().collect();
                devices.sort();
                devices
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(s: &str) -> DeviceId {
        DeviceId::new(s).unwrap()
    }

    #[test]
    fn device_access_grants_all_or_exactly_the_named_devices() {
        assert!(DeviceAccess::All.allows(&device("any")));
        let only = DeviceAccess::only([device("lock")]);
        assert!(only.allows(&device("lock")));
        assert!(!only.allows(&device("safe")));
        assert!(!DeviceAccess::none().allows(&device("lock")));
    }

    #[tokio::test]
    async fn granted_subscriptions_are_the_devices_the_credentials_name() {
        let user = UserId::new("alice");
        let named =
            ConnectionInfo::user(user.clone(), DeviceAccess::only([device("b"), device("a")]));
        assert_eq!(
            GrantedSubscriptions.initial_subscriptions(&named).await,
            vec![device("a"), device("b")]
        );
        let dev_mode = ConnectionInfo::user(user, DeviceAccess::All);
        assert!(
            GrantedSubscriptions
                .initial_subscriptions(&dev_mode)
                .await
                .is_empty()
        );
    }

    #[tokio::test]
    async fn fixed_subscriptions_give_every_connection_the_same_list() {
        let source = FixedSubscriptions::new([device("lock")]);
        let info = ConnectionInfo::user(UserId::new("bob"), DeviceAccess::none());
        assert_eq!(
            source.initial_subscriptions(&info).await,
            vec![device("lock")]
        );
        let default = FixedSubscriptions::default();
        assert!(default.initial_subscriptions(&info).await.is_empty());
    }

    #[tokio::test]
    async fn the_default_policy_follows_the_connection_access() {
        let info = ConnectionInfo::bridge(
            UserId::new("phone"),
            vec![device("lock")],
            DeviceAccess::only([device("lock")]),
        );
        assert!(GrantedAccess.may_bridge(&info, &device("lock")).await);
        assert!(!GrantedAccess.may_bridge(&info, &device("safe")).await);
        assert!(!GrantedAccess.may_command(&info, &device("safe")).await);
        assert_eq!(info.connect_devices(), &[device("lock")]);
        assert_eq!(info.role(), Role::Bridge);
    }
}
