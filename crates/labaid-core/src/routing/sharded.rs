//! A hash map kept in 64 shards, so that growing it never rehashes more than a 64th at once.
//!
//! The core decides under one lock. Its request and order-number tables, each one hash table,
//! doubled inside a single insert, which then held every decision for as long as rehashing the
//! whole table took (tens of milliseconds at a few hundred thousand live requests, growing with
//! them). The shards fill evenly, so they grow one after another over many inserts, each pausing
//! for a 64th of that.

use std::collections::HashMap;
use std::collections::hash_map::{Entry, VacantEntry};
use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::ops::Index;

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use rustc_hash::{FxBuildHasher, FxHasher};

/// Shards per map.
const SHARDS: usize = 64;

/// A hash map in [`SHARDS`] shards, each a `HashMap` with hasher `S`.
#[derive(Clone)]
pub struct ShardedMap<K, V, S = FxBuildHasher> {
    shards: Box<[HashMap<K, V, S>]>,
    len: usize,
}

/// The shard of `key`: the middle bits of a fast hash, which a shard's own table (even one with
/// the same hash) does not index by, so that its keys still spread over its buckets. The fast
/// hash only places keys; each shard hashes them again with `S` (SipHash for order numbers,
/// which a client chooses: one crafted to land in one shard grows that shard as the whole map
/// grew before, no worse).
fn shard_of<K: Hash + ?Sized>(key: &K) -> usize {
    let mut h = FxHasher::default();
    key.hash(&mut h);
    (h.finish() >> 32) as usize % SHARDS
}

impl<K, V, S: Default> Default for ShardedMap<K, V, S> {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| HashMap::default()).collect(),
            len: 0,
        }
    }
}

impl<K, V, S> ShardedMap<K, V, S> {
    /// Every value, in no particular order.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.shards.iter().flat_map(HashMap::values)
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.shards.iter().flat_map(HashMap::iter)
    }
}

impl<K: Eq + Hash, V, S: BuildHasher> ShardedMap<K, V, S> {
    /// Entries in the map.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the map holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Makes room for `additional` more entries spread evenly (a shard that gets more grows).
    pub fn reserve(&mut self, additional: usize) {
        let each = additional.div_ceil(SHARDS);
        for shard in self.shards.iter_mut() {
            shard.reserve(each);
        }
    }

    /// The value of `key`.
    pub fn get(&self, key: &K) -> Option<&V> {
        self.shards[shard_of(key)].get(key)
    }

    /// The value of `key`, to change.
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.shards[shard_of(key)].get_mut(key)
    }

    /// True when `key` is in the map.
    pub fn contains_key(&self, key: &K) -> bool {
        self.shards[shard_of(key)].contains_key(key)
    }

    /// Puts `value` at `key`, returning the value it replaced.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        let old = self.shards[shard_of(&key)].insert(key, value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Takes `key` out, returning its value.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        let old = self.shards[shard_of(key)].remove(key);
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    /// The entry of `key`, to look at or fill in with one lookup.
    pub fn entry(&mut self, key: K) -> ShardEntry<'_, K, V> {
        let shard = shard_of(&key);
        match self.shards[shard].entry(key) {
            Entry::Occupied(o) => ShardEntry::Occupied(o.into_mut()),
            Entry::Vacant(v) => ShardEntry::Vacant(VacantShardEntry {
                entry: v,
                len: &mut self.len,
            }),
        }
    }
}

/// An entry of a [`ShardedMap`]: the value already there, or room for one.
#[derive(Debug)]
pub enum ShardEntry<'a, K, V> {
    /// The key is in the map, with this value.
    Occupied(&'a V),
    /// The key is not in the map yet.
    Vacant(VacantShardEntry<'a, K, V>),
}

/// A key that is not in a [`ShardedMap`] yet.
pub struct VacantShardEntry<'a, K, V> {
    entry: VacantEntry<'a, K, V>,
    len: &'a mut usize,
}

impl<K, V> VacantShardEntry<'_, K, V> {
    /// Puts `value` at the key.
    pub fn insert(self, value: V) {
        self.entry.insert(value);
        *self.len += 1;
    }
}

impl<K, V> fmt::Debug for VacantShardEntry<'_, K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VacantShardEntry").finish_non_exhaustive()
    }
}

impl<K: Eq + Hash, V, S: BuildHasher> Index<&K> for ShardedMap<K, V, S> {
    type Output = V;

    fn index(&self, key: &K) -> &V {
        self.get(key).expect("key in the map")
    }
}

/// Equal when each shard is: a key always goes to the same shard.
impl<K: Eq + Hash, V: PartialEq, S: BuildHasher> PartialEq for ShardedMap<K, V, S> {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len
            && self
                .shards
                .iter()
                .zip(other.shards.iter())
                .all(|(a, b)| a == b)
    }
}

impl<K: fmt::Debug, V: fmt::Debug, S> fmt::Debug for ShardedMap<K, V, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// Encoded as one map, exactly as a `HashMap` of the same entries: snapshots written before the
/// shards read back, and these read in earlier builds.
impl<K: Serialize, V: Serialize, S> Serialize for ShardedMap<K, V, S> {
    fn serialize<Z: Serializer>(&self, serializer: Z) -> Result<Z::Ok, Z::Error> {
        let mut map = serializer.serialize_map(Some(self.len))?;
        for (k, v) in self.iter() {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::hash_map::RandomState;

    use super::*;

    #[test]
    fn behaves_as_one_map_and_counts_its_entries() {
        let mut map: ShardedMap<u64, u64> = ShardedMap::default();
        let mut plain = HashMap::new();
        for k in 0..10_000u64 {
            assert_eq!(map.insert(k % 7_000, k), plain.insert(k % 7_000, k));
        }
        for k in (0..7_000u64).step_by(3) {
            assert_eq!(map.remove(&k), plain.remove(&k));
        }
        assert_eq!(map.remove(&1_000_000), None);
        assert_eq!(map.len(), plain.len());
        for (k, v) in &plain {
            assert_eq!(map.get(k), Some(v));
            assert_eq!(map[k], *v);
        }
        let mut seen: Vec<_> = map.iter().map(|(k, v)| (*k, *v)).collect();
        seen.sort_unstable();
        let mut expected: Vec<_> = plain.into_iter().collect();
        expected.sort_unstable();
        assert_eq!(seen, expected);
    }

    #[test]
    fn entries_fill_in_once_and_count() {
        let mut map: ShardedMap<String, u32, RandomState> = ShardedMap::default();
        for (i, key) in ["a", "b", "a"].into_iter().enumerate() {
            match map.entry(key.to_string()) {
                ShardEntry::Occupied(v) => assert_eq!((key, *v), ("a", 0)),
                ShardEntry::Vacant(vacant) => vacant.insert(i as u32),
            }
        }
        assert_eq!(map.len(), 2);
        assert!(map.contains_key(&"b".to_string()));
    }

    #[test]
    fn spreads_keys_over_every_shard() {
        let mut map: ShardedMap<u64, ()> = ShardedMap::default();
        for k in 0..64_000u64 {
            map.insert(k.wrapping_mul(0x9e37_79b9_7f4a_7c15), ());
        }
        let sizes: Vec<usize> = map.shards.iter().map(HashMap::len).collect();
        assert!(
            sizes.iter().all(|&n| (700..=1_300).contains(&n)),
            "uneven shards: {sizes:?}"
        );
    }

    #[test]
    fn encodes_as_a_plain_map() {
        let mut map: ShardedMap<u32, u32> = ShardedMap::default();
        let mut plain: HashMap<u32, u32> = HashMap::new();
        for k in 0..100u32 {
            map.insert(k, k * 10);
            plain.insert(k, k * 10);
        }
        let encoded = postcard::to_allocvec(&map).expect("encodes");
        assert_eq!(
            encoded.len(),
            postcard::to_allocvec(&plain).expect("encodes").len()
        );
        let decoded: HashMap<u32, u32> = postcard::from_bytes(&encoded).expect("decodes");
        assert_eq!(decoded, plain);
    }
}
