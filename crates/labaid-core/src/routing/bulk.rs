//! Deserializers that build the core's big collections at their final size: a hash map sized
//! from the length the encoding states (serde's own caps its first guess and then rehashes as it
//! grows), and B-tree sets packed from their sorted encoding (serde's own inserts one element
//! at a time, which leaves the nodes about half full). They read the same encoding as serde's.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::marker::PhantomData;

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::ShardedMap;

/// Most entries reserved; a longer map still decodes, growing past it.
const MAX_RESERVE: usize = 1 << 26;
/// Entries reserved before any is read. The stated length is trusted further only in proportion
/// to the entries read: each step reserves up to [`RESERVE_GROWTH`] times those, so a damaged
/// length costs a small multiple of what the input holds, never gigabytes.
const FIRST_RESERVE: usize = 1 << 12;
/// How far each step of the reservation runs ahead of the entries read.
const RESERVE_GROWTH: usize = 16;

/// A map that can be sized before it is filled: a `HashMap`, or the core's [`ShardedMap`].
pub(crate) trait Presized<K, V>: Default {
    /// Makes room for `additional` entries.
    fn reserve(&mut self, additional: usize);
    /// Adds an entry.
    fn put(&mut self, key: K, value: V);
}

impl<K: Eq + Hash, V, S: BuildHasher + Default> Presized<K, V> for HashMap<K, V, S> {
    fn reserve(&mut self, additional: usize) {
        HashMap::reserve(self, additional);
    }

    fn put(&mut self, key: K, value: V) {
        self.insert(key, value);
    }
}

impl<K: Eq + Hash, V, S: BuildHasher + Default> Presized<K, V> for ShardedMap<K, V, S> {
    fn reserve(&mut self, additional: usize) {
        ShardedMap::reserve(self, additional);
    }

    fn put(&mut self, key: K, value: V) {
        self.insert(key, value);
    }
}

/// A map reserved at the length its encoding states.
pub(crate) fn presized_map<'de, D, K, V, M>(deserializer: D) -> Result<M, D::Error>
where
    D: Deserializer<'de>,
    K: Deserialize<'de>,
    V: Deserialize<'de>,
    M: Presized<K, V>,
{
    struct MapVisitor<K, V, M>(PhantomData<(K, V, M)>);
    impl<'de, K, V, M> Visitor<'de> for MapVisitor<K, V, M>
    where
        K: Deserialize<'de>,
        V: Deserialize<'de>,
        M: Presized<K, V>,
    {
        type Value = M;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
            let stated = access.size_hint().unwrap_or(0).min(MAX_RESERVE);
            let mut map = M::default();
            let mut reserved = stated.min(FIRST_RESERVE);
            map.reserve(reserved);
            let mut read = 0;
            while let Some((k, v)) = access.next_entry()? {
                if read == reserved && reserved < stated {
                    let next = stated.min(read.saturating_mul(RESERVE_GROWTH));
                    map.reserve(next - read);
                    reserved = next;
                }
                map.put(k, v);
                read += 1;
            }
            Ok(map)
        }
    }
    deserializer.deserialize_map(MapVisitor(PhantomData))
}

/// A B-tree set packed from its (sorted) encoding.
pub(crate) fn packed_set<'de, D, T>(deserializer: D) -> Result<BTreeSet<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Ord,
{
    Ok(PackedSet::deserialize(deserializer)?.0)
}

/// A map of packed B-tree sets (the waiting queue's groups).
pub(crate) fn map_of_packed_sets<'de, D, K, T, S>(
    deserializer: D,
) -> Result<HashMap<K, BTreeSet<T>, S>, D::Error>
where
    D: Deserializer<'de>,
    K: Deserialize<'de> + Eq + Hash,
    T: Deserialize<'de> + Ord,
    S: BuildHasher + Default,
{
    let map: HashMap<K, PackedSet<T>, S> = presized_map(deserializer)?;
    Ok(map.into_iter().map(|(k, v)| (k, v.0)).collect())
}

struct PackedSet<T>(BTreeSet<T>);

impl<'de, T: Deserialize<'de> + Ord> Deserialize<'de> for PackedSet<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // `FromIterator` sorts (linear on sorted input) and builds full nodes bottom-up.
        Ok(Self(
            Vec::<T>::deserialize(deserializer)?.into_iter().collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Both {
        #[serde(deserialize_with = "presized_map")]
        map: HashMap<u32, String>,
        #[serde(deserialize_with = "packed_set")]
        set: BTreeSet<(u8, u64)>,
        #[serde(deserialize_with = "map_of_packed_sets")]
        groups: HashMap<String, BTreeSet<u16>>,
    }

    thread_local! {
        /// The most entries a `Reserving` map was asked to make room for, on this test's thread.
        static MOST: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    /// A map that records what it was asked to reserve.
    #[derive(Default)]
    struct Reserving {
        len: usize,
    }

    impl Presized<u32, u32> for Reserving {
        fn reserve(&mut self, additional: usize) {
            MOST.with(|m| m.set(m.get().max(self.len + additional)));
        }

        fn put(&mut self, _: u32, _: u32) {
            self.len += 1;
        }
    }

    #[test]
    fn a_stated_length_the_input_cannot_hold_reserves_little() {
        // A map that says it holds 2^26 entries and holds three: damage, found by the
        // snapshot_read fuzz target as a 7.6 GB reservation from a 200-byte snapshot.
        let mut bytes = vec![0x80, 0x80, 0x80, 0x20];
        for entry in [(1u32, 2u32), (3, 4), (5, 6)] {
            bytes.extend(postcard::to_stdvec(&entry).unwrap());
        }
        let mut de = postcard::Deserializer::from_bytes(&bytes);
        let read = presized_map::<_, u32, u32, Reserving>(&mut de);
        assert!(read.is_err(), "the input ends before the entries it states");
        let most = MOST.with(std::cell::Cell::get);
        assert!(most <= FIRST_RESERVE, "reserved room for {most} entries");
    }

    #[test]
    fn a_long_map_is_reserved_in_a_few_steps_up_to_its_stated_length() {
        let map: HashMap<u32, u32> = (0..100_000).map(|i| (i, i)).collect();
        let bytes = postcard::to_stdvec(&map).unwrap();
        let mut de = postcard::Deserializer::from_bytes(&bytes);
        let read: HashMap<u32, u32> = presized_map(&mut de).unwrap();
        assert_eq!(read, map);
        assert!(read.capacity() >= map.len());
    }

    #[test]
    fn reads_what_serde_wrote_for_the_standard_collections() {
        let map: HashMap<u32, String> = (0..1000).map(|i| (i, format!("v{i}"))).collect();
        let set: BTreeSet<(u8, u64)> = (0..5000).map(|i| ((i % 7) as u8, i)).collect();
        let groups: HashMap<String, BTreeSet<u16>> = [
            ("a".to_string(), (0..300).collect()),
            ("b".into(), BTreeSet::new()),
        ]
        .into();
        let bytes = postcard::to_stdvec(&(&map, &set, &groups)).unwrap();
        let both: Both = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(both.map, map);
        assert_eq!(both.set, set);
        assert_eq!(both.groups, groups);
    }
}
