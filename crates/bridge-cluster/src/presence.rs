//! What the other nodes hold: each node's summary of its holders per device, merged into one
//! [`RemotePresence`] per device. Sans-IO, time passed in.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use bridge_hub::RemotePresence;
use bridge_protocol::DeviceId;

use crate::membership::Incarnation;

/// One node's devices, as it last said.
#[derive(Debug, Clone)]
struct NodeView {
    epoch: u64,
    updated: Instant,
    devices: HashMap<DeviceId, RemotePresence>,
}

/// The other nodes' presence reports.
#[derive(Debug, Clone, Default)]
pub struct PresenceTable {
    nodes: HashMap<String, NodeView>,
}

impl PresenceTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    fn view(&mut self, from: &Incarnation, now: Instant) -> (&mut NodeView, Vec<DeviceId>) {
        let mut dropped = Vec::new();
        let view = self
            .nodes
            .entry(from.node.clone())
            .or_insert_with(|| NodeView {
                epoch: from.epoch,
                updated: now,
                devices: HashMap::new(),
            });
        if view.epoch != from.epoch {
            // A new life of the node: what the old one held is gone.
            dropped.extend(view.devices.drain().map(|(d, _)| d));
            view.epoch = from.epoch;
        }
        view.updated = now;
        (view, dropped)
    }

    /// `from` says what it holds of `device` now (`bridges == 0`: nothing). Returns the
    /// devices whose remote view may have changed.
    pub fn update(
        &mut self,
        from: &Incarnation,
        device: DeviceId,
        presence: RemotePresence,
        now: Instant,
    ) -> Vec<DeviceId> {
        let (view, mut changed) = self.view(from, now);
        let before = if presence.bridges == 0 {
            view.devices.remove(&device)
        } else {
            view.devices.insert(device.clone(), presence)
        };
        if before != (presence.bridges > 0).then_some(presence) {
            changed.push(device);
        }
        changed
    }

    /// `from` says everything it holds now. Returns the devices whose remote view may have
    /// changed.
    pub fn replace(
        &mut self,
        from: &Incarnation,
        devices: Vec<(DeviceId, RemotePresence)>,
        now: Instant,
    ) -> Vec<DeviceId> {
        let (view, dropped) = self.view(from, now);
        let new: HashMap<DeviceId, RemotePresence> =
            devices.into_iter().filter(|(_, p)| p.bridges > 0).collect();
        let mut changed: BTreeSet<DeviceId> = dropped.into_iter().collect();
        for (device, before) in &view.devices {
            if new.get(device) != Some(before) {
                changed.insert(device.clone());
            }
        }
        for (device, after) in &new {
            if view.devices.get(device) != Some(after) {
                changed.insert(device.clone());
            }
        }
        view.devices = new;
        changed.into_iter().collect()
    }

    /// Forgets what `node` held (it died, or restarted). Returns the devices it held.
    pub fn forget(&mut self, node: &str) -> Vec<DeviceId> {
        self.nodes
            .remove(node)
            .map(|view| view.devices.into_keys().collect())
            .unwrap_or_default()
    }

    /// Forgets the nodes not heard of for longer than `stale_after` that `alive` does not
    /// vouch for (a report from a node that never joined). Returns the devices they held.
    pub fn forget_stale(
        &mut self,
        now: Instant,
        stale_after: Duration,
        alive: impl Fn(&Incarnation) -> bool,
    ) -> Vec<DeviceId> {
        let stale: Vec<String> = self
            .nodes
            .iter()
            .filter(|(node, view)| {
                now.saturating_duration_since(view.updated) > stale_after
                    && !alive(&Incarnation {
                        node: (*node).clone(),
                        epoch: view.epoch,
                    })
            })
            .map(|(node, _)| node.clone())
            .collect();
        stale.iter().flat_map(|node| self.forget(node)).collect()
    }

    /// The other nodes' holders of `device`, merged: bridges summed, the best report (link,
    /// then rssi) kept; `None` when no other node holds it.
    pub fn remote(&self, device: &DeviceId) -> Option<RemotePresence> {
        let mut merged: Option<RemotePresence> = None;
        for view in self.nodes.values() {
            let Some(p) = view.devices.get(device) else {
                continue;
            };
            merged = Some(match merged {
                None => *p,
                Some(m) => {
                    let best = if p.outranks(m.ble_connected, m.rssi) {
                        p
                    } else {
                        &m
                    };
                    RemotePresence::new(m.bridges + p.bridges, best.ble_connected, best.rssi)
                }
            });
        }
        merged
    }

    /// Each node's holders of `device`, by node id.
    pub fn holders(&self, device: &DeviceId) -> Vec<(String, RemotePresence)> {
        let mut holders: Vec<_> = self
            .nodes
            .iter()
            .filter_map(|(node, view)| view.devices.get(device).map(|p| (node.clone(), *p)))
            .collect();
        holders.sort_by(|a, b| a.0.cmp(&b.0));
        holders
    }

    /// Every device some other node holds.
    pub fn devices(&self) -> BTreeSet<DeviceId> {
        self.nodes
            .values()
            .flat_map(|view| view.devices.keys().cloned())
            .collect()
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

    fn d(id: &str) -> DeviceId {
        DeviceId::new(id).unwrap()
    }

    #[test]
    fn bridges_are_summed_and_the_best_report_wins() {
        let t = Instant::now();
        let mut table = PresenceTable::new();
        table.update(
            &inc("a", 1),
            d("lock"),
            RemotePresence::new(1, Some(true), Some(-80)),
            t,
        );
        table.update(
            &inc("b", 1),
            d("lock"),
            RemotePresence::new(2, Some(true), Some(-40)),
            t,
        );
        table.update(
            &inc("c", 1),
            d("lock"),
            RemotePresence::new(1, None, None),
            t,
        );
        assert_eq!(
            table.remote(&d("lock")),
            Some(RemotePresence::new(4, Some(true), Some(-40)))
        );
        assert_eq!(table.remote(&d("other")), None);
        assert_eq!(table.forget("b"), vec![d("lock")]);
        assert_eq!(
            table.remote(&d("lock")),
            Some(RemotePresence::new(2, Some(true), Some(-80)))
        );
    }

    #[test]
    fn a_link_up_outranks_any_rssi_and_a_report_outranks_none() {
        let t = Instant::now();
        let mut table = PresenceTable::new();
        table.update(
            &inc("a", 1),
            d("lock"),
            RemotePresence::new(1, Some(false), Some(-10)),
            t,
        );
        table.update(
            &inc("b", 1),
            d("lock"),
            RemotePresence::new(1, None, None),
            t,
        );
        assert_eq!(table.remote(&d("lock")).unwrap().ble_connected, None);
        table.update(
            &inc("c", 1),
            d("lock"),
            RemotePresence::new(1, Some(true), Some(-90)),
            t,
        );
        assert_eq!(
            table.remote(&d("lock")),
            Some(RemotePresence::new(3, Some(true), Some(-90)))
        );
    }

    #[test]
    fn zero_bridges_removes_and_changes_are_reported_once() {
        let t = Instant::now();
        let mut table = PresenceTable::new();
        let p = RemotePresence::new(1, None, None);
        assert_eq!(table.update(&inc("a", 1), d("lock"), p, t), vec![d("lock")]);
        assert!(
            table.update(&inc("a", 1), d("lock"), p, t).is_empty(),
            "no news"
        );
        assert_eq!(
            table.update(&inc("a", 1), d("lock"), RemotePresence::default(), t),
            vec![d("lock")]
        );
        assert_eq!(table.remote(&d("lock")), None);
    }

    #[test]
    fn a_snapshot_replaces_and_a_new_epoch_drops_the_old_life() {
        let t = Instant::now();
        let mut table = PresenceTable::new();
        let p = RemotePresence::new(1, None, None);
        table.update(&inc("a", 1), d("x"), p, t);
        table.update(&inc("a", 1), d("y"), p, t);
        let changed = table.replace(&inc("a", 1), vec![(d("y"), p), (d("z"), p)], t);
        assert_eq!(changed, vec![d("x"), d("z")]);
        assert_eq!(
            table.devices().into_iter().collect::<Vec<_>>(),
            vec![d("y"), d("z")]
        );
        // The node restarted: its first delta drops everything of the old life.
        let changed = table.update(&inc("a", 2), d("w"), p, t);
        assert_eq!(changed.len(), 3);
        assert_eq!(
            table.devices().into_iter().collect::<Vec<_>>(),
            vec![d("w")]
        );
    }

    #[test]
    fn reports_of_a_node_that_never_joined_go_stale() {
        let t = Instant::now();
        let mut table = PresenceTable::new();
        let p = RemotePresence::new(1, None, None);
        table.update(&inc("ghost", 1), d("x"), p, t);
        table.update(&inc("a", 1), d("y"), p, t);
        let alive = |who: &Incarnation| who.node == "a";
        assert!(
            table
                .forget_stale(t + Duration::from_secs(5), Duration::from_secs(5), alive)
                .is_empty()
        );
        assert_eq!(
            table.forget_stale(t + Duration::from_secs(6), Duration::from_secs(5), alive),
            vec![d("x")]
        );
        assert_eq!(table.holders(&d("y")), vec![("a".to_owned(), p)]);
    }
}
