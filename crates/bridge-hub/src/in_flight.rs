//! The one count of commands in flight per connection: RAII tickets over the connection's
//! counter.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use bridge_protocol::ConnectionId;

use crate::outbox::Outbox;

/// One command in flight on one connection: a `ble_write` sent to a bridge with
/// [`Hub::send_to_device`](crate::Hub::send_to_device), or a user's `command` frame handed
/// over in [`HubEvent::UserCommand`](crate::HubEvent::UserCommand).
///
/// The ticket *is* the count: making one counts one more command in flight on its
/// connection, dropping it counts one less. Whoever owns the command owns its ticket (the
/// session manager's pending entry for a `ble_write`, the task running a user's `command`)
/// and drops it when the command ends, whatever ends it; there is no separate "finished"
/// call to make, and none to make twice. The ticket keeps the connection's counter alive,
/// so it may outlive the connection (the count of a closed connection is read by nobody).
///
/// What reads the count: routing among a device's holders (PROTOCOL.md 2, fewest commands in
/// flight per connection) for bridge connections, the cap
/// [`HubConfig::max_commands_per_connection`](crate::HubConfig::max_commands_per_connection)
/// for user connections, and [`LocalHub::commands_in_flight`](crate::LocalHub::commands_in_flight).
///
/// A command may also be in flight on a connection of **another process** (a node of a
/// cluster that holds the chosen bridge): [`InFlight::remote`] makes its ticket, which names
/// the connection by a local stand-in id and carries a value dropped when the command ends
/// (the other process's own ticket is released then). Local tickets are unchanged by this:
/// one branch on drop.
///
/// Two tickets compare equal when they count on the same connection.
#[must_use = "dropping the ticket ends the command's in-flight count at once"]
pub struct InFlight {
    on: On,
}

enum On {
    Local(Arc<Outbox>),
    Remote {
        connection: ConnectionId,
        /// Dropped when the ticket is.
        _on_end: Box<dyn std::any::Any + Send + Sync>,
    },
}

impl InFlight {
    /// Counts one more command on `outbox` (and on its user's count, if it has one).
    pub(crate) fn begin(outbox: &Arc<Outbox>) -> Self {
        outbox.in_flight.fetch_add(1, Ordering::Relaxed);
        if let Some(user) = &outbox.user_commands {
            user.fetch_add(1, Ordering::Relaxed);
        }
        Self {
            on: On::Local(Arc::clone(outbox)),
        }
    }

    /// The ticket of a command in flight on a connection of another process, named here by
    /// `connection` (reserve one with
    /// [`LocalHub::reserve_connection_id`](crate::LocalHub::reserve_connection_id), so that it
    /// is never one of this hub's own). `on_end` is dropped when the ticket is: that is where
    /// a distributed hub tells the other process the command ended.
    pub fn remote(connection: ConnectionId, on_end: impl Send + Sync + 'static) -> Self {
        Self {
            on: On::Remote {
                connection,
                _on_end: Box::new(on_end),
            },
        }
    }

    /// Whether the command is in flight on another process's connection.
    pub fn is_remote(&self) -> bool {
        matches!(self.on, On::Remote { .. })
    }

    /// Counts one more command on `outbox` unless it already has `max` in flight, or its
    /// user already has `max_per_user` running over all its connections.
    pub(crate) fn try_begin(
        outbox: &Arc<Outbox>,
        max: usize,
        max_per_user: usize,
    ) -> Result<Self, Refused> {
        if let Some(user) = &outbox.user_commands
            && !try_increment(user, max_per_user)
        {
            return Err(Refused::User);
        }
        if !try_increment(&outbox.in_flight, max) {
            if let Some(user) = &outbox.user_commands {
                user.fetch_sub(1, Ordering::Relaxed);
            }
            return Err(Refused::Connection);
        }
        Ok(Self {
            on: On::Local(Arc::clone(outbox)),
        })
    }

    /// The connection the command is in flight on (for a remote one, its stand-in id here).
    pub fn connection(&self) -> ConnectionId {
        match &self.on {
            On::Local(outbox) => outbox.id,
            On::Remote { connection, .. } => *connection,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let On::Local(outbox) = &self.on {
            // Every ticket counted one up when it was made, so this never goes below zero.
            outbox.in_flight.fetch_sub(1, Ordering::Relaxed);
            if let Some(user) = &outbox.user_commands {
                user.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

/// Which cap refused a ticket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The connection's ([`HubConfig::max_commands_per_connection`](crate::HubConfig)).
    Connection,
    /// The user's, over all its connections
    /// ([`HubConfig::max_commands_per_user`](crate::HubConfig)).
    User,
}

/// Adds one to `counter` unless it is at `max` already.
fn try_increment(counter: &AtomicU32, max: usize) -> bool {
    let max = u32::try_from(max).unwrap_or(u32::MAX);
    counter
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            (n < max).then_some(n + 1)
        })
        .is_ok()
}

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlight")
            .field("connection", &self.connection())
            .field("remote", &self.is_remote())
            .finish()
    }
}

impl PartialEq for InFlight {
    fn eq(&self, other: &Self) -> bool {
        self.connection() == other.connection()
    }
}

impl Eq for InFlight {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_count_is_the_number_of_live_tickets() {
        let outbox = Arc::new(Outbox::new(ConnectionId::new(7), 4, None));
        let first = InFlight::begin(&outbox);
        let second = InFlight::try_begin(&outbox, 2, 9).expect("under the cap");
        assert_eq!(outbox.in_flight(), 2);
        assert_eq!(second.connection(), ConnectionId::new(7));
        assert_eq!(
            InFlight::try_begin(&outbox, 2, 9).err(),
            Some(Refused::Connection),
            "at the cap"
        );
        assert_eq!(outbox.in_flight(), 2, "a refused ticket counts nothing");
        drop(first);
        assert_eq!(outbox.in_flight(), 1);
        drop(second);
        assert_eq!(outbox.in_flight(), 0);
    }

    #[test]
    fn the_users_count_spans_its_connections_and_a_refusal_counts_nothing() {
        let user = Arc::new(AtomicU32::new(0));
        let a = Arc::new(Outbox::new(
            ConnectionId::new(1),
            4,
            Some(Arc::clone(&user)),
        ));
        let b = Arc::new(Outbox::new(
            ConnectionId::new(2),
            4,
            Some(Arc::clone(&user)),
        ));
        let on_a = InFlight::try_begin(&a, 2, 3).expect("under both caps");
        let on_b = [
            InFlight::try_begin(&b, 2, 3).expect("under both caps"),
            InFlight::try_begin(&b, 2, 3).expect("under both caps"),
        ];
        assert_eq!(user.load(Ordering::Relaxed), 3);
        assert_eq!(InFlight::try_begin(&a, 2, 3).err(), Some(Refused::User));
        assert_eq!((a.in_flight(), user.load(Ordering::Relaxed)), (1, 3));
        drop(on_a);
        assert_eq!(
            InFlight::try_begin(&b, 2, 3).err(),
            Some(Refused::Connection)
        );
        assert_eq!(
            user.load(Ordering::Relaxed),
            2,
            "the connection's refusal undid the user's count"
        );
        drop(on_b);
        assert_eq!(user.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_remote_ticket_names_its_stand_in_and_drops_its_value_with_it() {
        let ended = Arc::new(AtomicU32::new(0));
        struct End(Arc<AtomicU32>);
        impl Drop for End {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        let ticket = InFlight::remote(ConnectionId::new(99), End(Arc::clone(&ended)));
        assert!(ticket.is_remote());
        assert_eq!(ticket.connection(), ConnectionId::new(99));
        assert_eq!(ended.load(Ordering::Relaxed), 0);
        drop(ticket);
        assert_eq!(ended.load(Ordering::Relaxed), 1);
    }
}
