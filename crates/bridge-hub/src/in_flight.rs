//! The one count of commands in flight per connection: RAII tickets over the connection's
//! counter.

use std::sync::Arc;
use std::sync::atomic::Ordering;

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
/// Two tickets compare equal when they count on the same connection.
#[must_use = "dropping the ticket ends the command's in-flight count at once"]
pub struct InFlight {
    outbox: Arc<Outbox>,
}

impl InFlight {
    /// Counts one more command on `outbox`.
    pub(crate) fn begin(outbox: &Arc<Outbox>) -> Self {
        outbox.in_flight.fetch_add(1, Ordering::Relaxed);
        Self {
            outbox: Arc::clone(outbox),
        }
    }

    /// Counts one more command on `outbox` unless it already has `max` in flight.
    pub(crate) fn try_begin(outbox: &Arc<Outbox>, max: usize) -> Option<Self> {
        let max = u32::try_from(max).unwrap_or(u32::MAX);
        outbox
            .in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Self {
                outbox: Arc::clone(outbox),
            })
    }

    /// The connection the command is in flight on.
    pub fn connection(&self) -> ConnectionId {
        self.outbox.id
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // Every ticket counted one up when it was made, so this never goes below zero.
        self.outbox.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlight")
            .field("connection", &self.outbox.id)
            .finish()
    }
}

impl PartialEq for InFlight {
    fn eq(&self, other: &Self) -> bool {
        self.outbox.id == other.outbox.id
    }
}

impl Eq for InFlight {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_count_is_the_number_of_live_tickets() {
        let outbox = Arc::new(Outbox::new(ConnectionId::new(7), 4));
        let first = InFlight::begin(&outbox);
        let second = InFlight::try_begin(&outbox, 2).expect("under the cap");
        assert_eq!(outbox.in_flight(), 2);
        assert_eq!(second.connection(), ConnectionId::new(7));
        assert!(InFlight::try_begin(&outbox, 2).is_none(), "at the cap");
        assert_eq!(outbox.in_flight(), 2, "a refused ticket counts nothing");
        drop(first);
        assert_eq!(outbox.in_flight(), 1);
        drop(second);
        assert_eq!(outbox.in_flight(), 0);
    }
}
