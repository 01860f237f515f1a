//! [`RecentKeyMap`]: a map from strings (sessions, topics) that finds the key
//! it was last asked for again without hashing it.
//!
//! The pump looks up each event's session (for its sequence) and topic (for
//! ListTopics' counts), and a request's events mostly share both: hashing the
//! same 20-byte session again for every event of a batch was about 150
//! instructions an event (docs/perf.md, "Thirtieth pass"). Entries keep their
//! places (nothing is removed), so the last one found is remembered by its
//! place and checked with one comparison of the key.
//!
//! It owns the map alone. It must never remove an entry: a place remembered
//! would then name another key.

use indexmap::IndexMap;

/// String keys and their values, in the order keys were first inserted.
#[derive(Debug, Clone)]
pub struct RecentKeyMap<V> {
    /// Every key and its value; foldhash, as [`crate::FastMap`].
    entries: IndexMap<String, V, foldhash::fast::RandomState>,
    /// The place of the key found last (0 while the map is empty, which the
    /// bounds check of [`RecentKeyMap::get_or_insert`] turns away).
    last: usize,
}

impl<V> Default for RecentKeyMap<V> {
    fn default() -> Self {
        Self { entries: IndexMap::default(), last: 0 }
    }
}

impl<V> RecentKeyMap<V> {
    /// The value of `key`, inserted as `new()` when the key is not there yet
    /// (its text is copied only then).
    #[inline]
    pub fn get_or_insert(&mut self, key: &str, new: impl FnOnce() -> V) -> &mut V {
        let same = self.entries.get_index(self.last).is_some_and(|(k, _)| k == key);
        if !same {
            self.last = match self.entries.get_index_of(key) {
                Some(place) => place,
                None => self.entries.insert_full(key.to_string(), new()).0,
            };
        }
        &mut self.entries[self.last]
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        self.entries.get_mut(key)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every key and its value, in the order keys were first inserted.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &V)> {
        self.entries.iter()
    }
}

impl<V> Extend<(String, V)> for RecentKeyMap<V> {
    /// Inserts each pair; a key already there takes the later value.
    fn extend<I: IntoIterator<Item = (String, V)>>(&mut self, pairs: I) {
        self.entries.extend(pairs);
    }
}

impl<V> FromIterator<(String, V)> for RecentKeyMap<V> {
    fn from_iter<I: IntoIterator<Item = (String, V)>>(pairs: I) -> Self {
        let mut map = Self::default();
        map.extend(pairs);
        map
    }
}

/// Hands out `session`'s next sequence (the first is 1) and counts it.
#[inline]
pub fn take_sequence(next_sequence: &mut RecentKeyMap<u64>, session: &str) -> u64 {
    let next = next_sequence.get_or_insert(session, || 1);
    let sequence = *next;
    *next += 1;
    sequence
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    proptest! {
        /// Whatever the order of keys asked for, each key's value is what a
        /// plain `HashMap` holds after the same steps: the remembered place
        /// never hands out another key's value.
        #[test]
        fn it_holds_what_a_hash_map_holds(
            steps in prop::collection::vec((0usize..6, any::<bool>()), 0..200),
            preset in prop::collection::vec((0usize..6, 0u64..100), 0..4),
        ) {
            let name = |k: usize| format!("session-{k}");
            let mut map: RecentKeyMap<u64> = preset.iter().map(|&(k, v)| (name(k), v)).collect();
            let mut model: HashMap<String, u64> = preset.iter().map(|&(k, v)| (name(k), v)).collect();
            for (k, take) in steps {
                if take {
                    let expected = *model.entry(name(k)).or_insert(1);
                    model.insert(name(k), expected + 1);
                    prop_assert_eq!(take_sequence(&mut map, &name(k)), expected);
                } else {
                    prop_assert_eq!(map.get_mut(&name(k)).copied(), model.get(&name(k)).copied());
                    if let (Some(v), Some(m)) = (map.get_mut(&name(k)), model.get_mut(&name(k))) {
                        (*v, *m) = (*v / 2, *m / 2);
                    }
                }
            }
            let held: HashMap<String, u64> = map.iter().map(|(k, v)| (k.clone(), *v)).collect();
            prop_assert_eq!(held, model);
            prop_assert_eq!(map.len(), map.iter().count());
        }
    }
}
