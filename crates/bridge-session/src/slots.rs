//! Storage of pending commands: a slab whose keys are the request ids' sequence numbers.
//!
//! A sequence number is `generation << 32 | index << 8 | shard`: `index` is the entry's
//! place in the slab, `generation` counts how often that place was reused, `shard` is the
//! shard that owns it. Finding the command of an answer is an index and a compare: no map,
//! no hash. Freed places are reused last-in first-out, so a command answered at once keeps
//! reusing the same, cache-hot, place. A sequence number is never repeated while the
//! generation counter of its place has not wrapped (2^32 reuses of one place).

/// Bits of the shard number, the low bits of a sequence number.
pub(crate) const SHARD_BITS: u32 = 8;
/// Bits of the slab index.
const INDEX_BITS: u32 = 24;
/// Most entries one slab holds.
pub(crate) const MAX_ENTRIES: usize = 1 << INDEX_BITS;

#[derive(Debug)]
struct Slot<T> {
    generation: u32,
    value: Option<T>,
}

#[derive(Debug)]
pub(crate) struct Slots<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    shard: u8,
    len: usize,
}

impl<T> Slots<T> {
    pub(crate) fn new(shard: u8) -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
            shard,
            len: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Splits a sequence number into (index, generation) if it belongs to this shard.
    fn locate(&self, sequence: u64) -> Option<(usize, u32)> {
        #[allow(clippy::cast_possible_truncation)] // the masks say what is kept
        let (shard, index, generation) = (
            (sequence & ((1 << SHARD_BITS) - 1)) as u8,
            ((sequence >> SHARD_BITS) & ((1 << INDEX_BITS) - 1)) as usize,
            (sequence >> 32) as u32,
        );
        (shard == self.shard).then_some((index, generation))
    }

    fn sequence(&self, index: usize, generation: u32) -> u64 {
        (u64::from(generation) << 32) | ((index as u64) << SHARD_BITS) | u64::from(self.shard)
    }

    /// Stores `value` and returns its sequence number; `None` when the slab is full.
    pub(crate) fn insert(&mut self, value: T) -> Option<u64> {
        let index = match self.free.pop() {
            Some(index) => index as usize,
            None if self.slots.len() < MAX_ENTRIES => {
                self.slots.push(Slot {
                    generation: 0,
                    value: None,
                });
                self.slots.len() - 1
            }
            None => return None,
        };
        let slot = &mut self.slots[index];
        slot.value = Some(value);
        let generation = slot.generation;
        self.len += 1;
        Some(self.sequence(index, generation))
    }

    pub(crate) fn get_mut(&mut self, sequence: u64) -> Option<&mut T> {
        let (index, generation) = self.locate(sequence)?;
        let slot = self.slots.get_mut(index)?;
        if slot.generation == generation {
            slot.value.as_mut()
        } else {
            None
        }
    }

    pub(crate) fn get(&self, sequence: u64) -> Option<&T> {
        let (index, generation) = self.locate(sequence)?;
        let slot = self.slots.get(index)?;
        if slot.generation == generation {
            slot.value.as_ref()
        } else {
            None
        }
    }

    pub(crate) fn contains(&self, sequence: u64) -> bool {
        self.locate(sequence).is_some_and(|(index, generation)| {
            self.slots
                .get(index)
                .is_some_and(|slot| slot.generation == generation && slot.value.is_some())
        })
    }

    pub(crate) fn remove(&mut self, sequence: u64) -> Option<T> {
        let (index, generation) = self.locate(sequence)?;
        let slot = self.slots.get_mut(index)?;
        if slot.generation != generation {
            return None;
        }
        let value = slot.value.take()?;
        slot.generation = slot.generation.wrapping_add(1);
        // `index < MAX_ENTRIES = 2^24`, which fits in a u32.
        self.free.push(u32::try_from(index).unwrap_or(u32::MAX));
        self.len -= 1;
        Some(value)
    }

    /// The stored values.
    pub(crate) fn values(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().filter_map(|slot| slot.value.as_ref())
    }

    /// Removes every value for which `remove` says so (it may also change the values it
    /// keeps), handing each removed one to `taken` with its sequence number.
    pub(crate) fn remove_where(
        &mut self,
        mut remove: impl FnMut(&mut T) -> bool,
        mut taken: impl FnMut(u64, T),
    ) {
        for index in 0..self.slots.len() {
            let slot = &mut self.slots[index];
            if !slot.value.as_mut().is_some_and(&mut remove) {
                continue;
            }
            let generation = slot.generation;
            if let Some(value) = slot.value.take() {
                slot.generation = generation.wrapping_add(1);
                self.free.push(u32::try_from(index).unwrap_or(u32::MAX));
                self.len -= 1;
                let sequence = self.sequence(index, generation);
                taken(sequence, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reused_place_gets_a_new_sequence_number() {
        let mut slots = Slots::new(3);
        let first = slots.insert("a").unwrap();
        assert_eq!(first & 0xFF, 3, "the shard is in the low bits");
        assert_eq!(slots.remove(first), Some("a"));
        let second = slots.insert("b").unwrap();
        assert_ne!(first, second);
        assert!(!slots.contains(first));
        assert_eq!(slots.get_mut(first), None);
        assert_eq!(slots.remove(first), None);
        assert_eq!(slots.get_mut(second), Some(&mut "b"));
        assert_eq!(slots.len(), 1);
    }

    #[test]
    fn sequence_numbers_of_another_shard_or_place_are_not_found() {
        let mut slots = Slots::new(0);
        let seq = slots.insert(1).unwrap();
        assert!(!slots.contains(seq | 1), "another shard");
        assert!(
            !slots.contains(seq + (5 << SHARD_BITS)),
            "a place never used"
        );
        assert!(slots.contains(seq));
    }

    #[test]
    fn remove_where_takes_exactly_the_matching_values() {
        let mut slots = Slots::new(0);
        let seqs: Vec<u64> = (0..10).map(|i| slots.insert(i).unwrap()).collect();
        let mut taken = Vec::new();
        slots.remove_where(|v| *v % 2 == 0, |seq, v| taken.push((seq, v)));
        assert_eq!(taken.len(), 5);
        assert!(taken.iter().all(|&(seq, v)| seqs[v] == seq));
        assert_eq!(slots.len(), 5);
        let mut left: Vec<_> = slots.values().copied().collect();
        left.sort_unstable();
        assert_eq!(left, vec![1, 3, 5, 7, 9]);
    }
}
