//! Which node's bridge a command goes through: PROTOCOL.md 2's order among every node's
//! holders, as far as it can be compared across nodes. Pure.

use bridge_hub::RemotePresence;

/// Where a command goes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Route {
    /// Through this node's best holder.
    Local,
    /// Through the best holder of that node.
    Remote(String),
}

/// The best holder among this node's (`local`: its best holder's last `ble_status`
/// `connected` and `rssi`, or `None` when this node holds nothing) and the other nodes'
/// (`remote`: each node's best holder, as its presence reports say).
///
/// Link status first (`connected: true` before no report before `connected: false`), then
/// the strongest rssi (one never reported ranks below every one that was). Within a node the
/// hub goes on with the fewest commands in flight and the most recent claim; across nodes a
/// tie on link and rssi goes to this node's holder (no hop), then to the first node by id.
/// `None` when nobody holds the device.
pub fn choose(
    local: Option<(Option<bool>, Option<i8>)>,
    remote: &[(String, RemotePresence)],
) -> Option<Route> {
    let mut best: Option<(&str, &RemotePresence)> = None;
    let mut sorted: Vec<&(String, RemotePresence)> =
        remote.iter().filter(|(_, p)| p.bridges > 0).collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    for (node, p) in sorted {
        if best.is_none_or(|(_, b)| p.outranks(b.ble_connected, b.rssi)) {
            best = Some((node, p));
        }
    }
    match (local, best) {
        (None, None) => None,
        (Some(_), None) => Some(Route::Local),
        (None, Some((node, _))) => Some(Route::Remote(node.to_owned())),
        (Some((connected, rssi)), Some((node, p))) => Some(if p.outranks(connected, rssi) {
            Route::Remote(node.to_owned())
        } else {
            Route::Local
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, connected: Option<bool>, rssi: Option<i8>) -> (String, RemotePresence) {
        (id.to_owned(), RemotePresence::new(1, connected, rssi))
    }

    #[test]
    fn nobody_holds_it() {
        assert_eq!(choose(None, &[]), None);
        assert_eq!(
            choose(None, &[("a".into(), RemotePresence::default())]),
            None
        );
    }

    #[test]
    fn a_connected_holder_elsewhere_beats_a_silent_one_here() {
        assert_eq!(
            choose(Some((None, None)), &[node("b", Some(true), None)]),
            Some(Route::Remote("b".into()))
        );
        assert_eq!(
            choose(Some((Some(false), Some(-20))), &[node("b", None, None)]),
            Some(Route::Remote("b".into())),
            "no report beats a link that is down, whatever its rssi"
        );
    }

    #[test]
    fn the_strongest_rssi_wins_across_nodes() {
        let remote = [
            node("b", Some(true), Some(-70)),
            node("c", Some(true), Some(-40)),
            node("d", Some(true), None),
        ];
        assert_eq!(
            choose(Some((Some(true), Some(-60))), &remote),
            Some(Route::Remote("c".into()))
        );
        assert_eq!(
            choose(Some((Some(true), Some(-30))), &remote),
            Some(Route::Local)
        );
    }

    #[test]
    fn ties_stay_here_then_go_to_the_first_node() {
        let remote = [
            node("c", Some(true), Some(-50)),
            node("b", Some(true), Some(-50)),
        ];
        assert_eq!(
            choose(Some((Some(true), Some(-50))), &remote),
            Some(Route::Local)
        );
        assert_eq!(choose(None, &remote), Some(Route::Remote("b".into())));
    }
}
