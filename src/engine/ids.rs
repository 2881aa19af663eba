//! The set of accepted event ids (their 128-bit hashes), kept compact.
//!
//! Every accepted id stays in memory for the life of the database (deduplication is exact
//! over the whole history), so its cost per id matters: a general hash table of `u128`
//! costs 17 bytes per slot at most 7/8 full and doubles when full (272 MiB, 37 bytes per
//! id, for the 7.7M ids of the reference workload at scale M). This set is an *ordered* linear-probing
//! table (Amble & Knuth, 1974), ~20 bytes per id:
//!
//! - ids are split into [`SHARDS`] shards by their top bits (hashes are uniform), and each
//!   shard grows on its own, by [`GROWTH`] rather than doubling (once past
//!   [`DOUBLING_HOME_SLOTS_MAX`]), at most [`LOAD_MAX`] full: memory follows the number of
//!   ids closely, and a growth rebuilds one shard only;
//! - a shard is one array of slots (0: empty). An id's home slot is its low 64 bits scaled
//!   to the table, and the occupied slots are sorted: a lookup starts at the home slot and
//!   stops at the first empty slot or larger id — a few adjacent slots (on average about
//!   five at 90% full, fewer below), one cache miss — and an insertion shifts the run after
//!   its place by one slot.
//!
//! Ids are stored rotated by 64 bits so that plain `u128` order is (home slot, id) order.
//! Invariants (checked by `Shard::check` in the tests): the occupied slots are strictly
//! increasing, each id sits at or after its home slot with no empty slot in between, and
//! every id is in the shard its top bits name. The id 0 (rotated: 0, the empty mark) is
//! kept aside in a flag.

/// log2 of the number of shards.
const SHARD_BITS: u32 = 8;
/// Shards, by the top [`SHARD_BITS`] bits of the hash.
pub(crate) const SHARDS: usize = 1 << SHARD_BITS;
/// A shard grows once more than this fraction of its home slots hold ids.
const LOAD_MAX: f64 = 0.9;
/// ...to this many times as many home slots.
const GROWTH: f64 = 1.2;
/// Home slots below which a shard doubles instead: rebuilding small shards 1.2 times
/// larger at a time was most of the cost of an insert (each id copied ~17 times), and all
/// of them together take 16 MiB at most.
const DOUBLING_HOME_SLOTS_MAX: usize = 4096;
/// A set built at once (on open) is this full: room to grow before the first rebuild.
const LOAD_AT_BUILD: f64 = 0.8;
/// Home slots of a shard's first table.
const HOME_SLOTS_MIN: usize = 16;

/// The accepted id hashes. See the module documentation.
pub(crate) struct IdSet {
    shards: Box<[Shard]>,
    has_zero: bool,
    len: usize,
}

#[derive(Default)]
struct Shard {
    /// `home_slots` home slots, then room for runs that spill past the last one (an
    /// insertion that would need more grows the shard). Rotated ids; 0 is empty.
    slots: Vec<u128>,
    home_slots: usize,
    len: usize,
}

/// The home slots of a shard that grows from `home_slots`: double while small, then by
/// [`GROWTH`].
fn grown(home_slots: usize) -> usize {
    let factor = if home_slots < DOUBLING_HOME_SLOTS_MAX {
        2.0
    } else {
        GROWTH
    };
    ((home_slots as f64 * factor) as usize).max(HOME_SLOTS_MIN)
}

fn shard_of(id: u128) -> usize {
    (id >> (128 - SHARD_BITS)) as usize
}

/// Room after the home slots for the end of the last run.
fn spill_slots(home_slots: usize) -> usize {
    8 + home_slots / 32
}

impl Default for IdSet {
    fn default() -> IdSet {
        IdSet {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            has_zero: false,
            len: 0,
        }
    }
}

impl IdSet {
    /// A set of the given ids (in any order, repeats allowed): see [`IdSetBuilder`].
    #[cfg(test)]
    pub(crate) fn from_ids(ids: impl IntoIterator<Item = u128>) -> IdSet {
        let mut builder = IdSetBuilder::default();
        builder.extend(ids);
        builder.build()
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether `id` is present ([`IdSet::insert`] answers it while adding; tests ask).
    #[cfg(test)]
    pub(crate) fn contains(&self, id: u128) -> bool {
        if id == 0 {
            return self.has_zero;
        }
        self.shards[shard_of(id)].contains(id.rotate_left(64))
    }

    /// Read the home slot of each of `ids`, so that the lookups or inserts that follow find
    /// them in the cache. Each lookup is a cache miss the processor cannot overlap with
    /// the next one's (its probe branches on what the miss brings); these reads have no
    /// branches on their values, so their misses overlap.
    pub(crate) fn warm(&self, ids: impl IntoIterator<Item = u128>) {
        let mut seen = 0u128;
        for id in ids {
            let shard = &self.shards[shard_of(id)];
            let at = home(id.rotate_left(64), shard.home_slots);
            // The home slot's cache line and the next: where a lookup or an insert of
            // a table this full mostly ends.
            seen ^= shard.slots.get(at).copied().unwrap_or(0);
            seen ^= shard.slots.get(at + 4).copied().unwrap_or(0);
        }
        std::hint::black_box(seen);
    }

    /// Add an id; `false` if it was already present.
    pub(crate) fn insert(&mut self, id: u128) -> bool {
        let added = if id == 0 {
            !std::mem::replace(&mut self.has_zero, true)
        } else {
            self.shards[shard_of(id)].insert(id.rotate_left(64))
        };
        self.len += usize::from(added);
        added
    }

    /// Add many ids at once (repeats, and ids already present, are skipped); returns how
    /// many were added. Cheaper than one [`IdSet::insert`] each when there are many: they
    /// are sorted into slot order, so each shard is walked once, front to back, and a shard
    /// they would fill past [`LOAD_MAX`] is rebuilt once, at its final size, instead of
    /// growing step by step. One thread: a replay's flush runs it beside the writers of its
    /// runs.
    pub(crate) fn insert_many(&mut self, ids: &[u128]) -> usize {
        let before = self.len;
        let mut grouped = IdSetBuilder::for_ids(ids.len());
        grouped.extend(ids.iter().copied());
        if grouped.has_zero {
            self.insert(0);
        }
        for (shard, ids) in self.shards.iter_mut().zip(grouped.sorted_by_shard()) {
            if !ids.is_empty() {
                self.len += shard.insert_sorted(&ids);
            }
        }
        self.len - before
    }

    /// Approximate heap bytes.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.shards.iter().map(|s| s.slots.capacity() * 16).sum()
    }
}

/// Builds an [`IdSet`] at once (on open, from the ids the state store holds): the ids are
/// grouped by shard as they come, then each shard's are sorted by buckets and its table
/// built once, at [`LOAD_AT_BUILD`]. (Collecting every id first and sorting them all by
/// comparison took ~40% of a restart's open.) [`IdSet::insert_many`] groups and sorts its
/// ids the same way.
pub(crate) struct IdSetBuilder {
    /// By shard: its ids, rotated.
    by_shard: Vec<Vec<u128>>,
    has_zero: bool,
}

impl Default for IdSetBuilder {
    fn default() -> IdSetBuilder {
        IdSetBuilder {
            by_shard: (0..SHARDS).map(|_| Vec::new()).collect(),
            has_zero: false,
        }
    }
}

impl IdSetBuilder {
    /// A builder with room for about `ids` ids: each shard's share, and three standard
    /// deviations more (hashes spread over the shards binomially), so that its lists
    /// rarely grow by copying themselves.
    fn for_ids(ids: usize) -> IdSetBuilder {
        let share = ids / SHARDS;
        let room = share + 3 * share.isqrt() + 16;
        IdSetBuilder {
            by_shard: (0..SHARDS).map(|_| Vec::with_capacity(room)).collect(),
            has_zero: false,
        }
    }

    /// Add ids, in any order, repeats allowed.
    pub(crate) fn extend(&mut self, ids: impl IntoIterator<Item = u128>) {
        for id in ids {
            if id == 0 {
                self.has_zero = true;
            } else {
                self.by_shard[shard_of(id)].push(id.rotate_left(64));
            }
        }
    }

    pub(crate) fn build(self) -> IdSet {
        let mut set = IdSet {
            has_zero: self.has_zero,
            ..IdSet::default()
        };
        for (shard, ids) in set.shards.iter_mut().zip(self.sorted_by_shard()) {
            let home_slots = ((ids.len() as f64 / LOAD_AT_BUILD) as usize).max(HOME_SLOTS_MIN);
            *shard = Shard::build(ids.iter().copied(), home_slots);
        }
        set.len = usize::from(set.has_zero) + set.shards.iter().map(|s| s.len).sum::<usize>();
        set
    }

    /// Each shard's ids (0 aside), sorted into slot order and without repeats, shard
    /// after shard (each list freed once the caller is done with it).
    fn sorted_by_shard(self) -> impl Iterator<Item = Vec<u128>> {
        let (mut scratch, mut buckets) = (Vec::new(), Vec::new());
        self.by_shard.into_iter().map(move |mut ids| {
            sort_rotated(&mut ids, &mut scratch, &mut buckets);
            let distinct = dedup_sorted(&mut ids);
            ids.truncate(distinct);
            ids
        })
    }
}

/// Move the distinct values of sorted `ids` to its front; returns how many there are.
fn dedup_sorted(ids: &mut [u128]) -> usize {
    if ids.is_empty() {
        return 0;
    }
    let mut distinct = 1;
    for at in 1..ids.len() {
        if ids[at] != ids[distinct - 1] {
            ids[distinct] = ids[at];
            distinct += 1;
        }
    }
    distinct
}

/// Sort one shard's rotated ids (`scratch` and `buckets` reused from call to call). Their
/// top bits are uniform (they are a hash's), so a counting sort by the top bits, into
/// about half as many buckets as ids, leaves a bucket a few ids to sort: linear time, where
/// comparing them all took ~10% of a replay's flush. Any ids sort, only slower.
fn sort_rotated(ids: &mut [u128], scratch: &mut Vec<u128>, buckets: &mut Vec<u32>) {
    const SORT_BY_COMPARING_BELOW: usize = 64;
    debug_assert!(
        u32::try_from(ids.len()).is_ok(),
        "a shard holds fewer than 2^32 ids"
    );
    if ids.len() < SORT_BY_COMPARING_BELOW {
        ids.sort_unstable();
        return;
    }
    let bits = (ids.len() / 2).next_power_of_two().trailing_zeros();
    let bucket = |id: u128| (id >> (128 - bits)) as usize;
    // `buckets[b]`: where bucket `b` starts, then (while placing) where its next id goes.
    buckets.clear();
    buckets.resize((1 << bits) + 1, 0);
    for &id in ids.iter() {
        buckets[bucket(id) + 1] += 1;
    }
    for b in 1..buckets.len() {
        buckets[b] += buckets[b - 1];
    }
    scratch.clear();
    scratch.resize(ids.len(), 0);
    for &id in ids.iter() {
        let next = &mut buckets[bucket(id)];
        scratch[*next as usize] = id;
        *next += 1;
    }
    // Each bucket now ends where the next one started; sorted within, in place: by
    // insertion, unless ids far from uniform filled it.
    const INSERTION_SORT_MAX: usize = 16;
    let mut start = 0;
    for &end in &buckets[..1 << bits] {
        let end = end as usize;
        let run = &mut scratch[start..end];
        if run.len() > INSERTION_SORT_MAX {
            run.sort_unstable();
        } else {
            for at in 1..run.len() {
                let id = run[at];
                let mut to = at;
                while to > 0 && run[to - 1] > id {
                    run[to] = run[to - 1];
                    to -= 1;
                }
                run[to] = id;
            }
        }
        start = end;
    }
    ids.copy_from_slice(scratch);
}

impl Extend<u128> for IdSet {
    fn extend<I: IntoIterator<Item = u128>>(&mut self, ids: I) {
        for id in ids {
            self.insert(id);
        }
    }
}

impl Shard {
    /// A table with `home_slots` home slots holding `rotated` (sorted, distinct, nonzero),
    /// each at its home slot or right after the previous one. `None` if they spill past
    /// the end.
    fn try_build(rotated: impl Iterator<Item = u128>, home_slots: usize) -> Option<Shard> {
        let mut slots = vec![0u128; home_slots + spill_slots(home_slots)];
        let (mut next, mut len) = (0, 0);
        for r in rotated {
            let at = home(r, home_slots).max(next);
            *slots.get_mut(at)? = r;
            next = at + 1;
            len += 1;
        }
        Some(Shard {
            slots,
            home_slots,
            len,
        })
    }

    /// [`Shard::try_build`], with more home slots until they fit.
    fn build(rotated: impl Iterator<Item = u128> + Clone, mut home_slots: usize) -> Shard {
        loop {
            if let Some(shard) = Shard::try_build(rotated.clone(), home_slots) {
                return shard;
            }
            home_slots = (home_slots as f64 * GROWTH) as usize + 1;
        }
    }

    #[cfg(test)]
    fn contains(&self, rotated: u128) -> bool {
        use std::cmp::Ordering;
        let start = home(rotated, self.home_slots);
        for &slot in &self.slots[start..] {
            match slot.cmp(&rotated) {
                Ordering::Less if slot != 0 => continue,
                Ordering::Equal => return true,
                _ => return false, // empty, or past where it would be
            }
        }
        false
    }

    fn insert(&mut self, rotated: u128) -> bool {
        let start = home(rotated, self.home_slots);
        let mut at = start.min(self.slots.len());
        while at < self.slots.len() && self.slots[at] != 0 && self.slots[at] < rotated {
            at += 1;
        }
        if at < self.slots.len() && self.slots[at] == rotated {
            return false;
        }
        let empty = self.slots[at..]
            .iter()
            .position(|&s| s == 0)
            .map(|i| at + i);
        let grow_now = (self.len + 1) as f64 > self.home_slots as f64 * LOAD_MAX;
        match empty {
            Some(empty) if !grow_now => {
                self.slots.copy_within(at..empty, at + 1);
                self.slots[at] = rotated;
                self.len += 1;
            }
            _ => {
                // Full enough, or the run would spill past the end: rebuild larger, from
                // the present ids (in order) with the new one in its place, as they are
                // read (a rebuild had been most of an insert's cost, half of it copying
                // them to a list first).
                let present = self.slots.iter().copied().filter(|&s| s != 0);
                let all = (present.clone().take_while(|&s| s < rotated))
                    .chain(std::iter::once(rotated))
                    .chain(present.skip_while(|&s| s < rotated));
                let home_slots = grown(self.home_slots);
                *self = Shard::build(all, home_slots);
            }
        }
        true
    }

    /// Insert `new` (rotated, sorted, distinct, nonzero); returns how many were absent.
    fn insert_sorted(&mut self, new: &[u128]) -> usize {
        if (self.len + new.len()) as f64 <= self.home_slots as f64 * LOAD_MAX {
            return new.iter().filter(|&&r| self.insert(r)).count();
        }
        // Rebuild once with everything: the present ids are already in order.
        let mut all = Vec::with_capacity(self.len + new.len());
        let mut present = self.slots.iter().copied().filter(|&s| s != 0).peekable();
        for &r in new {
            while let Some(p) = present.next_if(|&p| p < r) {
                all.push(p);
            }
            if present.peek() != Some(&r) {
                all.push(r);
            }
        }
        all.extend(present);
        let added = all.len() - self.len;
        // Sized to what it holds (not doubled: it is not growing one id at a time).
        let needed = (all.len() as f64 / LOAD_AT_BUILD) as usize;
        let home_slots = needed
            .max((self.home_slots as f64 * GROWTH) as usize)
            .max(HOME_SLOTS_MIN);
        *self = Shard::build(all.iter().copied(), home_slots);
        added
    }

    #[cfg(test)]
    fn check(&self, index: usize) {
        let occupied: Vec<(usize, u128)> = (self.slots.iter().copied().enumerate())
            .filter(|&(_, s)| s != 0)
            .collect();
        assert_eq!(occupied.len(), self.len);
        assert!(
            occupied.windows(2).all(|w| w[0].1 < w[1].1),
            "sorted, distinct"
        );
        for &(at, r) in &occupied {
            assert_eq!(shard_of(r.rotate_right(64)), index, "in its shard");
            let from = home(r, self.home_slots);
            assert!(from <= at, "at or after its home slot");
            assert!(
                self.slots[from..at].iter().all(|&s| s != 0),
                "no gap before it"
            );
        }
        assert!(self.len as f64 <= self.home_slots as f64 * LOAD_MAX || self.len == 0);
    }
}

/// The home slot of a rotated id: its top 64 bits (the id's low 64) scaled to the table.
fn home(rotated: u128, home_slots: usize) -> usize {
    (((rotated >> 64) * home_slots as u128) >> 64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustc_hash::FxHashSet;

    /// A deterministic stream of well-mixed 128-bit values (splitmix64, twice).
    fn ids(seed: u64, n: usize) -> Vec<u128> {
        let mut state = seed;
        let mut next = || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        (0..n)
            .map(|_| (u128::from(next()) << 64) | u128::from(next()))
            .collect()
    }

    fn check(set: &IdSet) {
        for (index, shard) in set.shards.iter().enumerate() {
            shard.check(index);
        }
        let held: usize = set.shards.iter().map(|s| s.len).sum();
        assert_eq!(held + usize::from(set.has_zero), set.len());
    }

    #[test]
    fn inserts_and_lookups_agree_with_a_hash_set_through_many_growths() {
        let mut set = IdSet::default();
        let mut model = FxHashSet::default();
        // 200k ids, each offered twice (the second time a duplicate), in two orders; plus
        // ids that share a shard and bucket prefix with present ones.
        let fresh = ids(7, 200_000);
        // Warming reads any shard, grown or still empty, and changes nothing.
        set.warm(fresh.iter().copied().chain([0, u128::MAX]));
        for (round, chunk) in fresh.chunks(10_000).enumerate() {
            set.warm(chunk.iter().copied());
            for &id in chunk {
                assert_eq!(set.insert(id), model.insert(id));
            }
            for &id in chunk.iter().rev() {
                assert!(!set.insert(id), "a repeat is refused");
            }
            let near: Vec<u128> = chunk.iter().map(|id| id ^ 1).collect();
            for &id in &near {
                assert_eq!(set.contains(id), model.contains(&id));
            }
            if round % 5 == 0 {
                check(&set);
            }
        }
        check(&set);
        assert_eq!(set.len(), model.len());
        for &id in ids(8, 50_000).iter().chain(&fresh) {
            assert_eq!(set.contains(id), model.contains(&id));
        }
        // Extremes of the hash space land in the first and last shard and bucket.
        for id in [0, 1, u128::MAX, u128::MAX - 1, 1 << 120] {
            assert!(!set.contains(id));
            assert!(set.insert(id));
            assert!(set.contains(id));
        }
        check(&set);
    }

    /// Ids whose low 64 bits are equal share a home slot whatever the table's size: one
    /// long run, past the spill room, so the shard must grow until it fits. Hash outputs
    /// almost never do this; the set must still be right.
    #[test]
    fn ids_sharing_a_home_slot_make_one_run_and_stay_findable() {
        let low = 0x1234_5678_9abc_def0u128;
        let same_home: Vec<u128> = (1..=300u128).map(|i| (i << 64) | low).collect();
        let mut set = IdSet::default();
        for (n, &id) in same_home.iter().enumerate() {
            assert!(set.insert(id));
            assert!(!set.insert(id));
            assert!(same_home[..=n].iter().all(|&x| set.contains(x)));
        }
        check(&set);
        assert!(!set.contains((301 << 64) | low));
        assert!(!set.contains(low), "the id 0 << 64 | low was never added");
        let built = IdSet::from_ids(same_home.clone());
        check(&built);
        assert!(same_home.iter().all(|&x| built.contains(x)));
        assert!(set.insert(0) && set.contains(0) && !set.insert(0));
        assert_eq!(set.len(), 301);
    }

    /// The bucket sort sorts uniform ids, ids that fill a few buckets (the same top bits),
    /// repeats, and lists too short for buckets, with its buffers reused.
    #[test]
    fn rotated_ids_sort_however_they_spread() {
        let uniform = ids(13, 5_000);
        let same_top: Vec<u128> = uniform.iter().map(|id| id >> 20).collect();
        let few_tops: Vec<u128> = uniform
            .iter()
            .map(|id| (id % 7) << 125 | id >> 40)
            .collect();
        let mut repeated = uniform[..900].to_vec();
        repeated.extend_from_within(..450);
        let (mut scratch, mut buckets) = (Vec::new(), Vec::new());
        for list in [
            uniform,
            same_top,
            few_tops,
            repeated,
            ids(14, 63),
            ids(15, 64),
            vec![],
        ] {
            let mut expected = list.clone();
            expected.sort_unstable();
            let mut sorted = list;
            sort_rotated(&mut sorted, &mut scratch, &mut buckets);
            assert_eq!(sorted, expected);
        }
    }

    #[test]
    fn a_set_built_at_once_equals_one_built_by_inserts() {
        let mut all = ids(11, 100_000);
        all.extend_from_within(..1000); // repeats
        all.extend([0, 0]); // the id kept aside, twice
        let built = IdSet::from_ids(all.clone());
        check(&built);
        assert_eq!(built.len(), 100_001);
        assert!(built.contains(0));
        let mut inserted = IdSet::default();
        inserted.extend(all.iter().copied());
        for &id in all.iter().chain(&ids(12, 10_000)) {
            assert_eq!(built.contains(id), inserted.contains(id));
        }
        assert!(IdSet::from_ids(Vec::new()).len() == 0);
    }

    /// Bulk inserts, into empty and grown shards, with repeats within and across calls and
    /// the id 0, agree with a hash set; so does the count of ids added.
    #[test]
    fn bulk_inserts_agree_with_a_hash_set() {
        let mut set = IdSet::default();
        let mut model = FxHashSet::default();
        let all = ids(21, 120_000);
        for (round, chunk) in all.chunks(7_000).enumerate() {
            let mut batch = chunk.to_vec();
            batch.extend_from_slice(&chunk[..100]); // repeats within the batch
            if round > 0 {
                batch.extend_from_slice(&all[..50]); // ids added before
            }
            if round == 3 {
                batch.push(0);
            }
            let expected = batch.iter().filter(|&&id| model.insert(id)).count();
            // Single inserts in between: both ways of adding share the shards.
            assert_eq!(set.insert_many(&batch), expected);
            let single = ids(1000 + round as u64, 300);
            for &id in &single {
                assert_eq!(set.insert(id), model.insert(id));
            }
            check(&set);
            assert_eq!(set.len(), model.len());
        }
        // A big batch, with repeats of its own and of ids added before.
        let mut big = ids(24, 100_000);
        big.extend_from_slice(&all[..1000]);
        big.extend_from_within(..500);
        let expected = big.iter().filter(|&&id| model.insert(id)).count();
        assert_eq!(set.insert_many(&big), expected);
        check(&set);
        assert_eq!(set.len(), model.len());
        for &id in all
            .iter()
            .chain(&ids(22, 20_000))
            .chain(&ids(24, 1000))
            .chain([&0, &1])
        {
            assert_eq!(set.contains(id), model.contains(&id));
        }
        assert_eq!(set.insert_many(&[]), 0);
        // A big batch into a small set is built at its final size, not grown step by step.
        let mut bulk = IdSet::default();
        bulk.insert_many(&ids(23, 1 << 20));
        let per_id = bulk.heap_bytes() as f64 / bulk.len() as f64;
        assert!(per_id < 21.0, "{per_id} bytes per id");
    }

    #[test]
    fn memory_per_id_is_well_below_a_hash_table() {
        let set = IdSet::from_ids(ids(3, 1 << 20));
        let per_id = set.heap_bytes() as f64 / set.len() as f64;
        assert!(per_id < 21.0, "{per_id} bytes per id");
        let mut grown = IdSet::default();
        grown.extend(ids(3, 1 << 20));
        let per_id = grown.heap_bytes() as f64 / grown.len() as f64;
        assert!(
            per_id < 23.0,
            "{per_id} bytes per id after growing by inserts"
        );
    }
}
