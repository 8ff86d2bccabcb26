//! The deadlines of pending commands, earliest first, cheap for the common case.
//!
//! Commands mostly come in a few timeout classes (the default 10 s, a handful of others), so
//! the deadlines registered one after another mostly grow. They are kept in a few FIFO
//! queues, each sorted by construction (a deadline joins the first queue whose last
//! deadline is not later, as in patience sorting): push is O(1), the earliest deadline is
//! the smallest queue front. The rare deadline that fits no queue goes to a binary heap.
//!
//! Entries of commands that ended are removed at once when they sit at either end of their
//! queue (a command answered right away is the last one pushed; answers in order are the
//! first), else skipped when they surface, and swept when they outnumber the live ones.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::Instant;

/// Most sorted queues before deadlines overflow into the heap.
const MAX_QUEUES: usize = 8;
/// Where an entry went: a queue index, or this for the heap.
pub(crate) const IN_HEAP: u8 = u8::MAX;
/// Sweeps keep at most this many stale entries beyond the live ones.
const SLACK: usize = 1024;

#[derive(Debug, Default)]
pub(crate) struct Deadlines {
    queues: Vec<VecDeque<(Instant, u64)>>,
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    /// Entries in all queues and the heap, stale ones included.
    stored: usize,
}

impl Deadlines {
    /// Adds `sequence`, due at `deadline`. Returns where it went, for [`Self::remove`].
    /// `live` is the number of commands pending, for sweeping; `is_live` tells whether a
    /// stored sequence is still pending.
    pub(crate) fn push(
        &mut self,
        deadline: Instant,
        sequence: u64,
        live: usize,
        is_live: impl Fn(u64) -> bool,
    ) -> u8 {
        if self.stored > 2 * live + SLACK {
            self.sweep(&is_live);
        }
        self.stored += 1;
        let fits = self
            .queues
            .iter()
            .position(|q| q.back().is_none_or(|&(last, _)| last <= deadline));
        let index = match fits {
            Some(index) => index,
            None if self.queues.len() < MAX_QUEUES => {
                self.queues.push(VecDeque::new());
                self.queues.len() - 1
            }
            None => {
                self.heap.push(Reverse((deadline, sequence)));
                return IN_HEAP;
            }
        };
        self.queues[index].push_back((deadline, sequence));
        // `index < MAX_QUEUES`, which fits in a u8.
        u8::try_from(index).unwrap_or(IN_HEAP)
    }

    /// Forgets `sequence`, which ended, if that is cheap: when it sits at an end of its
    /// queue. Otherwise it is skipped later.
    pub(crate) fn remove(&mut self, sequence: u64, slot: u8, is_live: impl Fn(u64) -> bool) {
        let Some(queue) = self.queues.get_mut(usize::from(slot)) else {
            return;
        };
        if queue.back().is_some_and(|&(_, s)| s == sequence) {
            queue.pop_back();
            self.stored -= 1;
        } else if queue.front().is_some_and(|&(_, s)| s == sequence) {
            queue.pop_front();
            self.stored -= 1;
            while queue.front().is_some_and(|&(_, s)| !is_live(s)) {
                queue.pop_front();
                self.stored -= 1;
            }
        }
    }

    /// The earliest live deadline, dropping stale entries on the way.
    pub(crate) fn earliest(&mut self, is_live: impl Fn(u64) -> bool) -> Option<Instant> {
        let mut earliest: Option<Instant> = None;
        for queue in &mut self.queues {
            while let Some(&(deadline, sequence)) = queue.front() {
                if is_live(sequence) {
                    earliest = Some(earliest.map_or(deadline, |e| e.min(deadline)));
                    break;
                }
                queue.pop_front();
                self.stored -= 1;
            }
        }
        while let Some(&Reverse((deadline, sequence))) = self.heap.peek() {
            if is_live(sequence) {
                earliest = Some(earliest.map_or(deadline, |e| e.min(deadline)));
                break;
            }
            self.heap.pop();
            self.stored -= 1;
        }
        earliest
    }

    /// Removes and returns, in no particular order, every stored sequence due at or before
    /// `now` (stale ones included: the caller skips those).
    pub(crate) fn pop_due(&mut self, now: Instant, due: &mut Vec<u64>) {
        for queue in &mut self.queues {
            while let Some(&(deadline, sequence)) = queue.front() {
                if deadline > now {
                    break;
                }
                queue.pop_front();
                self.stored -= 1;
                due.push(sequence);
            }
        }
        while let Some(&Reverse((deadline, sequence))) = self.heap.peek() {
            if deadline > now {
                break;
            }
            self.heap.pop();
            self.stored -= 1;
            due.push(sequence);
        }
    }

    fn sweep(&mut self, is_live: &impl Fn(u64) -> bool) {
        for queue in &mut self.queues {
            queue.retain(|&(_, s)| is_live(s));
        }
        self.queues.retain(|q| !q.is_empty());
        self.heap.retain(|Reverse((_, s))| is_live(*s));
        self.stored = self.queues.iter().map(VecDeque::len).sum::<usize>() + self.heap.len();
    }

    /// Forgets everything.
    pub(crate) fn clear(&mut self) {
        self.queues.clear();
        self.heap.clear();
        self.stored = 0;
    }

    /// Entries stored, stale ones included (for tests of the sweeping).
    #[cfg(test)]
    pub(crate) fn stored(&self) -> usize {
        self.stored
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::time::Duration;

    use super::*;

    #[test]
    fn earliest_live_deadline_comes_first_whatever_the_push_order() {
        let t0 = Instant::now();
        let mut d = Deadlines::default();
        let all = |_| true;
        // Two interleaved timeout classes plus shuffled one-offs: enough to overflow into
        // the heap.
        let offsets = [10, 120, 11, 121, 5, 3, 1, 7, 2, 9, 4, 8, 6, 0];
        for (seq, secs) in offsets.iter().enumerate() {
            d.push(t0 + Duration::from_secs(*secs), seq as u64, 100, all);
        }
        let mut due = Vec::new();
        d.pop_due(t0 + Duration::from_secs(10), &mut due);
        let mut due_secs: Vec<u64> = due
            .iter()
            .map(|&s| offsets[usize::try_from(s).unwrap()])
            .collect();
        due_secs.sort_unstable();
        assert_eq!(due_secs, vec![0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        assert_eq!(d.earliest(all), Some(t0 + Duration::from_secs(11)));
    }

    #[test]
    fn ended_entries_at_either_end_are_dropped_at_once() {
        let t0 = Instant::now();
        let mut d = Deadlines::default();
        let mut live: HashSet<u64> = (0..3).collect();
        for s in 0..3 {
            d.push(t0 + Duration::from_secs(s), s, 3, |_| true);
        }
        live.remove(&2);
        d.remove(2, 0, |s| live.contains(&s));
        live.remove(&0);
        d.remove(0, 0, |s| live.contains(&s));
        assert_eq!(d.stored(), 1);
        assert_eq!(
            d.earliest(|s| live.contains(&s)),
            Some(t0 + Duration::from_secs(1))
        );
    }

    #[test]
    fn stale_entries_are_swept_when_they_outnumber_live_ones() {
        let t0 = Instant::now();
        let mut d = Deadlines::default();
        // One command stays pending at the front; the others end in the middle.
        d.push(t0, 0, 1, |_| true);
        for s in 1..10_000_u64 {
            d.push(t0 + Duration::from_millis(s), s, 1, |x| x == 0);
            d.push(t0 + Duration::from_hours(1), u64::MAX, 1, |x| x == 0);
        }
        assert!(d.stored() <= 2 * 2 + SLACK + 2, "stored {}", d.stored());
    }
}
