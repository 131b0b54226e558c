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

/// Most entries reserved up front; a longer map still decodes, growing past it.
const MAX_RESERVE: usize = 1 << 26;

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
            let mut map = M::default();
            map.reserve(access.size_hint().unwrap_or(0).min(MAX_RESERVE));
            while let Some((k, v)) = access.next_entry()? {
                map.put(k, v);
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
