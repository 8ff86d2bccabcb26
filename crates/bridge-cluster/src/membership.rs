//! Who is alive: the membership table, fed with heartbeats and read with the time passed in.
//!
//! Sans-IO: [`Membership::heartbeat`] records a heartbeat seen at `now`,
//! [`Membership::expire`] forgets the nodes silent for longer than the dead-after period.
//! Neither reads a clock, so the table is tested on virtual time.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// One incarnation of a node: its id and the random number it drew when it started, so that
/// a node restarted under the same id is told apart from its former life.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Incarnation {
    /// The node's id (`--node-id`).
    pub node: String,
    /// Drawn at start.
    pub epoch: u64,
}

/// What a heartbeat or an expiry changed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Change {
    /// A node not seen before (or seen dead) is alive.
    Joined(Incarnation),
    /// A node is alive under a new epoch: its former life is dead.
    Restarted {
        /// The former life.
        old: Incarnation,
        /// The new one.
        new: Incarnation,
    },
    /// A node was silent too long, or said goodbye.
    Left(Incarnation),
}

#[derive(Debug, Clone)]
struct Member {
    epoch: u64,
    last_seen: Instant,
}

/// The nodes this node sees alive (itself included once its own heartbeat came back).
#[derive(Debug, Clone)]
pub struct Membership {
    dead_after: Duration,
    members: BTreeMap<String, Member>,
}

impl Membership {
    /// A table that declares a node dead when no heartbeat of it was seen for `dead_after`.
    pub fn new(dead_after: Duration) -> Self {
        Self {
            dead_after,
            members: BTreeMap::new(),
        }
    }

    /// Records a heartbeat of `who` seen at `now`.
    pub fn heartbeat(&mut self, who: &Incarnation, now: Instant) -> Option<Change> {
        match self.members.get_mut(&who.node) {
            Some(member) if member.epoch == who.epoch => {
                member.last_seen = member.last_seen.max(now);
                None
            }
            Some(member) => {
                let old = Incarnation {
                    node: who.node.clone(),
                    epoch: member.epoch,
                };
                *member = Member {
                    epoch: who.epoch,
                    last_seen: now,
                };
                Some(Change::Restarted {
                    old,
                    new: who.clone(),
                })
            }
            None => {
                self.members.insert(
                    who.node.clone(),
                    Member {
                        epoch: who.epoch,
                        last_seen: now,
                    },
                );
                Some(Change::Joined(who.clone()))
            }
        }
    }

    /// Forgets `who` at once (it said goodbye). Nothing if that incarnation is not alive.
    pub fn leave(&mut self, who: &Incarnation) -> Option<Change> {
        match self.members.get(&who.node) {
            Some(member) if member.epoch == who.epoch => {
                self.members.remove(&who.node);
                Some(Change::Left(who.clone()))
            }
            _ => None,
        }
    }

    /// Forgets every node whose last heartbeat is older than the dead-after period at `now`.
    pub fn expire(&mut self, now: Instant) -> Vec<Change> {
        let dead_after = self.dead_after;
        let dead: Vec<Incarnation> = self
            .members
            .iter()
            .filter(|(_, m)| now.saturating_duration_since(m.last_seen) > dead_after)
            .map(|(node, m)| Incarnation {
                node: node.clone(),
                epoch: m.epoch,
            })
            .collect();
        for who in &dead {
            self.members.remove(&who.node);
        }
        dead.into_iter().map(Change::Left).collect()
    }

    /// Forgets every node (this node lost its connection to the others).
    pub fn clear(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.members)
            .into_iter()
            .map(|(node, m)| {
                Change::Left(Incarnation {
                    node,
                    epoch: m.epoch,
                })
            })
            .collect()
    }

    /// Whether this incarnation is alive.
    pub fn is_alive(&self, who: &Incarnation) -> bool {
        self.members
            .get(&who.node)
            .is_some_and(|m| m.epoch == who.epoch)
    }

    /// When `who` was last heard of, if alive.
    pub fn last_seen(&self, who: &Incarnation) -> Option<Instant> {
        self.members
            .get(&who.node)
            .filter(|m| m.epoch == who.epoch)
            .map(|m| m.last_seen)
    }

    /// How many nodes are alive.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether no node is alive.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The live nodes, ordered by id.
    pub fn nodes(&self) -> impl Iterator<Item = Incarnation> + '_ {
        self.members.iter().map(|(node, m)| Incarnation {
            node: node.clone(),
            epoch: m.epoch,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inc(node: &str, epoch: u64) -> Incarnation {
        Incarnation {
            node: node.into(),
            epoch,
        }
    }

    #[test]
    fn a_node_joins_on_its_first_heartbeat_and_is_dead_after_the_silence() {
        let t0 = Instant::now();
        let mut table = Membership::new(Duration::from_secs(5));
        assert_eq!(
            table.heartbeat(&inc("a", 1), t0),
            Some(Change::Joined(inc("a", 1)))
        );
        assert_eq!(
            table.heartbeat(&inc("a", 1), t0 + Duration::from_secs(1)),
            None
        );
        assert_eq!(
            table.heartbeat(&inc("b", 7), t0 + Duration::from_secs(2)),
            Some(Change::Joined(inc("b", 7)))
        );
        assert_eq!(table.len(), 2);
        // a: last seen at 1 s; b at 2 s. At 6 s nobody is past 5 s of silence.
        assert!(table.expire(t0 + Duration::from_secs(6)).is_empty());
        // At 6.5 s, a has been silent 5.5 s.
        assert_eq!(
            table.expire(t0 + Duration::from_millis(6_500)),
            vec![Change::Left(inc("a", 1))]
        );
        assert!(!table.is_alive(&inc("a", 1)));
        assert!(table.is_alive(&inc("b", 7)));
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn a_new_epoch_under_the_same_id_is_a_restart() {
        let t0 = Instant::now();
        let mut table = Membership::new(Duration::from_secs(5));
        table.heartbeat(&inc("a", 1), t0);
        assert_eq!(
            table.heartbeat(&inc("a", 2), t0 + Duration::from_secs(1)),
            Some(Change::Restarted {
                old: inc("a", 1),
                new: inc("a", 2)
            })
        );
        assert!(table.is_alive(&inc("a", 2)));
        assert!(!table.is_alive(&inc("a", 1)));
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn goodbye_removes_at_once_but_only_the_same_life() {
        let t0 = Instant::now();
        let mut table = Membership::new(Duration::from_secs(5));
        table.heartbeat(&inc("a", 2), t0);
        assert_eq!(table.leave(&inc("a", 1)), None, "a former life's goodbye");
        assert_eq!(table.leave(&inc("a", 2)), Some(Change::Left(inc("a", 2))));
        assert!(table.is_empty());
        assert_eq!(
            table.heartbeat(&inc("a", 2), t0),
            Some(Change::Joined(inc("a", 2))),
            "seen again, it joins again"
        );
    }

    #[test]
    fn a_late_heartbeat_does_not_move_last_seen_back() {
        let t0 = Instant::now();
        let mut table = Membership::new(Duration::from_secs(5));
        table.heartbeat(&inc("a", 1), t0 + Duration::from_secs(3));
        table.heartbeat(&inc("a", 1), t0);
        assert_eq!(
            table.last_seen(&inc("a", 1)),
            Some(t0 + Duration::from_secs(3))
        );
    }

    #[test]
    fn clear_reports_everyone_as_left() {
        let t0 = Instant::now();
        let mut table = Membership::new(Duration::from_secs(5));
        table.heartbeat(&inc("a", 1), t0);
        table.heartbeat(&inc("b", 1), t0);
        assert_eq!(
            table.clear(),
            vec![Change::Left(inc("a", 1)), Change::Left(inc("b", 1))]
        );
        assert!(table.is_empty());
    }
}
