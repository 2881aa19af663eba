//! The set of distinct keys behind `count_distinct`, built for merging.
//!
//! Why: a query over a long window merges the `count_distinct` states of many tiles, and
//! with a hash table each merge inserts every key of the tile again (the 7-day merchant
//! sets of hot entities were a third of `as_of`'s time). Most distinct-counted fields are
//! strings, whose keys are the stream's interned ids: small, dense integers. Keys below
//! [`DENSE_KEYS`] live in a bitmap, where a merge is a word-wise OR and a tile's set costs a
//! bit per possible key instead of ~20 bytes per present one; other keys (large integers,
//! float bits, ids past the bitmap) live in a hash set.
//!
//! `retract` (the training sweep's sliding window) needs to know how many times each key
//! was folded in. Only a state made by [`DistinctKeys::retractable`] keeps those
//! multiplicities, and only while it is folded by `insert` and `remove_one`: merging a
//! non-empty state into it forgets them (queries merge and never retract, the sweep
//! retracts and never merges). Tile summaries do not pay for counts nobody reads.

use rustc_hash::{FxHashMap, FxHashSet};

/// Keys below this are held in the bitmap (at most 4,096 bits, 512 bytes per set).
pub const DENSE_KEYS: u64 = 4096;
const WORD_BITS: u64 = 64;

/// Invariant: a key is in at most one of `dense` and `sparse`, chosen by [`DENSE_KEYS`].
#[derive(Clone, Debug, Default)]
pub struct DistinctKeys {
    /// Bit `k % 64` of word `k / 64` is set when key `k < DENSE_KEYS` is in the set; no
    /// trailing zero words are kept beyond the highest key ever inserted.
    dense: Vec<u64>,
    /// The keys `>= DENSE_KEYS` in the set.
    sparse: FxHashSet<u64>,
    /// For a state that will be retracted from: the keys folded in more than once, and
    /// how many times more. `None`: multiplicities are not kept.
    repeats: Option<FxHashMap<u64, u32>>,
}

impl DistinctKeys {
    /// An empty set that keeps multiplicities, so that `remove_one` can undo `insert`.
    pub fn retractable() -> DistinctKeys {
        DistinctKeys {
            repeats: Some(FxHashMap::default()),
            ..DistinctKeys::default()
        }
    }

    /// How many distinct keys.
    pub fn len(&self) -> usize {
        self.dense
            .iter()
            .map(|w| w.count_ones() as usize)
            .sum::<usize>()
            + self.sparse.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sparse.is_empty() && self.dense.iter().all(|&w| w == 0)
    }

    /// Add one occurrence of `key`.
    pub fn insert(&mut self, key: u64) {
        let fresh = if key < DENSE_KEYS {
            let (word, bit) = ((key / WORD_BITS) as usize, 1u64 << (key % WORD_BITS));
            if word >= self.dense.len() {
                // Amortized growth: a query's set grows key by key. A set kept for long
                // (a tile summary) is cut to its size by `shrink_to_fit` when stored.
                self.dense.resize(word + 1, 0);
            }
            let fresh = self.dense[word] & bit == 0;
            self.dense[word] |= bit;
            fresh
        } else {
            self.sparse.insert(key)
        };
        if let (false, Some(repeats)) = (fresh, &mut self.repeats) {
            *repeats.entry(key).or_insert(0) += 1;
        }
    }

    /// Remove one occurrence of `key`, which must have been inserted (and not removed)
    /// more times than it is removed now.
    ///
    /// # Panics
    /// If the key is absent, or if this state keeps no multiplicities (it was not made
    /// [`retractable`](DistinctKeys::retractable), or merged another since).
    pub fn remove_one(&mut self, key: u64) {
        let repeats = self.repeats.as_mut().expect(
            "retract on a count_distinct state that keeps no multiplicities \
             (not made retractable, or merged into)",
        );
        if let Some(more) = repeats.get_mut(&key) {
            *more -= 1;
            if *more == 0 {
                repeats.remove(&key);
            }
            return;
        }
        let present = if key < DENSE_KEYS {
            let (word, bit) = ((key / WORD_BITS) as usize, 1u64 << (key % WORD_BITS));
            let present = self.dense.get(word).is_some_and(|w| w & bit != 0);
            if present {
                self.dense[word] &= !bit;
            }
            present
        } else {
            self.sparse.remove(&key)
        };
        assert!(present, "retracting a value that was folded in");
    }

    /// No bitmap word was ever needed and no large key is present: then the set is empty
    /// (the converse does not hold after removals). Cheaper than `is_empty`, which reads
    /// the words.
    fn never_filled(&self) -> bool {
        self.dense.is_empty() && self.sparse.is_empty()
    }

    /// The union with `other`.
    pub fn merge(&mut self, other: &DistinctKeys) {
        if other.never_filled() {
            return;
        }
        if self.never_filled() {
            // Nothing to combine: the copy is exact, multiplicities (if kept) included.
            self.clone_from(other);
            return;
        }
        if self.dense.len() < other.dense.len() {
            self.dense
                .reserve_exact(other.dense.len() - self.dense.len());
            self.dense.resize(other.dense.len(), 0);
        }
        for (mine, theirs) in self.dense.iter_mut().zip(&other.dense) {
            *mine |= theirs;
        }
        self.sparse.extend(other.sparse.iter().copied());
        self.repeats = None;
    }

    /// Give back the room kept for keys to come: for a set that is stored and only read
    /// or merged from then on.
    pub fn shrink_to_fit(&mut self) {
        self.dense.shrink_to_fit();
        self.sparse.shrink_to_fit();
    }

    /// Heap bytes owned (for the entity cache's budget).
    pub fn heap_bytes(&self) -> usize {
        self.dense.capacity() * std::mem::size_of::<u64>()
            + super::hash_table_bytes(self.sparse.capacity(), std::mem::size_of::<u64>())
            + self.repeats.as_ref().map_or(0, |repeats| {
                super::hash_table_bytes(repeats.capacity(), std::mem::size_of::<(u64, u32)>())
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against a counted model: inserts and removals in any mix, keys on both sides of
    /// the bitmap's bound.
    #[test]
    fn inserts_and_removals_follow_a_counted_model() {
        let mut set = DistinctKeys::retractable();
        let mut model: std::collections::HashMap<u64, u32> = Default::default();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let key = match state % 3 {
                0 => state >> 40 & 63,
                1 => DENSE_KEYS - 32 + (state >> 40 & 63),
                _ => state >> 20,
            };
            let present = model.get(&key).copied().unwrap_or(0);
            if present > 0 && state >> 8 & 1 == 1 {
                set.remove_one(key);
                if present == 1 {
                    model.remove(&key);
                } else {
                    model.insert(key, present - 1);
                }
            } else {
                set.insert(key);
                model.insert(key, present + 1);
            }
            assert_eq!(set.len(), model.len());
        }
    }

    #[test]
    fn merge_is_the_union_and_then_refuses_retract() {
        let mut a = DistinctKeys::retractable();
        let mut b = DistinctKeys::default();
        for k in [1, 5, 70, 5_000_000] {
            a.insert(k);
        }
        for k in [5, 4095, 4096, 5_000_000, 9] {
            b.insert(k);
        }
        let mut empty = DistinctKeys::retractable();
        empty.merge(&a);
        empty.remove_one(70); // a copy keeps its multiplicities
        assert_eq!(empty.len(), 3);
        let mut not_counted = b.clone();
        let refused = std::panic::catch_unwind(move || not_counted.remove_one(5));
        assert!(refused.is_err(), "not made retractable");
        a.merge(&DistinctKeys::default());
        assert_eq!(a.len(), 4);
        a.merge(&b);
        assert_eq!(a.len(), 7);
        let refused = std::panic::catch_unwind(move || a.remove_one(1));
        assert!(refused.is_err());
    }

    #[test]
    fn a_small_key_set_costs_its_bitmap_words_once_shrunk() {
        let mut set = DistinctKeys::default();
        for k in 0..300 {
            set.insert(k);
        }
        // Five words in use: 8 kept, by doubling from the first word's four.
        assert_eq!(set.heap_bytes(), 8 * 8);
        set.shrink_to_fit();
        assert_eq!(set.heap_bytes(), 5 * 8, "300 keys: five words, no table");
        assert_eq!(set.len(), 300);
    }
}
