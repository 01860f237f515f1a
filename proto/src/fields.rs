//! [`Fields`]: the keys and values of a `google.protobuf.Struct`, in key
//! order, as a sorted list while there are few of them and as a `BTreeMap`
//! past [`SMALL_FIELDS`].
//!
//! A payload key the schema does not name lands in a Struct, and a mod's
//! payload has a handful of them. As a `BTreeMap` each Struct allocated a
//! node for eleven entries and walked it to insert and again to drop: about
//! 5 % of the instructions of the ingest path's CPU part (docs/perf.md,
//! "Twenty-eighth pass"). A short sorted list costs one allocation and a
//! few comparisons. Past [`SMALL_FIELDS`] entries the map takes over, so a
//! hostile object of many keys in reverse order costs what it did, never a
//! shift of the whole list per key.
//!
//! It holds the keys in order and once each (a later value replaces an
//! earlier one, as JSON readers and protobuf decoders do), so iterating it is
//! what iterating the `BTreeMap` was. It must never hand out entries in
//! another order or keep two entries of one key.

use compact_str::CompactString;
use std::collections::{btree_map, BTreeMap};

/// The most entries held as a sorted list, and the room it takes at its
/// first key: an insert shifts at most this many, and the room (8 entries of
/// 56 bytes) stays within what the memory models charge a map's first entry
/// (`decoded_size`, the JSON reader's `HELD_PER_STRUCT`).
pub const SMALL_FIELDS: usize = 8;

/// The order of two keys, which is `str`'s: their first bytes decide it
/// unless they are the same. A Struct's few keys mostly differ there, and
/// the byte is compared in line where `str::cmp` calls `memcmp`.
#[inline]
fn key_order(held: &str, key: &str) -> std::cmp::Ordering {
    match held.as_bytes().first().cmp(&key.as_bytes().first()) {
        std::cmp::Ordering::Equal => held.cmp(key),
        decided => decided,
    }
}

/// A Struct's keys and values (`V`: `free_form::Value`), in key order.
pub struct Fields<V>(Held<V>);

/// How the entries are held.
#[derive(Clone)]
enum Held<V> {
    /// Sorted by key, no key twice, at most [`SMALL_FIELDS`] long.
    Few(Vec<(CompactString, V)>),
    /// Once more than [`SMALL_FIELDS`] keys have been inserted.
    Many(BTreeMap<CompactString, V>),
}

impl<V> Default for Fields<V> {
    fn default() -> Self {
        Fields(Held::Few(Vec::new()))
    }
}

impl<V> Fields<V> {
    pub fn len(&self) -> usize {
        match &self.0 {
            Held::Few(entries) => entries.len(),
            Held::Many(map) => map.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sets `key` to `value`, returning the value it replaces. Never
    /// inlined: inlined into the JSON reader's loops, it cost the CPU part
    /// about 95 instructions per event more (callgrind, twenty-eighth pass).
    #[inline(never)]
    pub fn insert(&mut self, key: CompactString, value: V) -> Option<V> {
        let entries = match &mut self.0 {
            Held::Many(map) => return map.insert(key, value),
            Held::Few(entries) => entries,
        };
        // Compared as `str`s: the key's text is found once, not at every
        // comparison (`CompactString`'s own `Ord` finds both sides' each time).
        let text = key.as_str();
        let place = entries.binary_search_by(|(k, _)| key_order(k, text));
        match place {
            Ok(at) => Some(std::mem::replace(&mut entries[at].1, value)),
            Err(at) if entries.len() < SMALL_FIELDS => {
                if entries.capacity() == 0 {
                    // All the room a short list takes, at once: no growth from
                    // four. Made new, not reserved: growing an empty list went
                    // through `finish_grow` (about 200 instructions a Struct).
                    *entries = Vec::with_capacity(SMALL_FIELDS);
                }
                entries.insert(at, (key, value));
                None
            }
            Err(_) => {
                let mut map: BTreeMap<_, _> = std::mem::take(entries).into_iter().collect();
                map.insert(key, value);
                self.0 = Held::Many(map);
                None
            }
        }
    }

    pub fn get(&self, key: &str) -> Option<&V> {
        match &self.0 {
            Held::Few(entries) => entries.binary_search_by(|(k, _)| key_order(k, key)).ok().map(|at| &entries[at].1),
            Held::Many(map) => map.get(key),
        }
    }

    fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        match &mut self.0 {
            Held::Few(entries) => {
                entries.binary_search_by(|(k, _)| key_order(k, key)).ok().map(|at| &mut entries[at].1)
            }
            Held::Many(map) => map.get_mut(key),
        }
    }

    /// Whether both are short lists of the same keys: a game state's updates
    /// mostly repeat the keys the kept state has, and then a copy is entry by
    /// entry, with no search per key.
    fn same_keys(&self, other: &Fields<V>) -> bool {
        match (&self.0, &other.0) {
            (Held::Few(ours), Held::Few(theirs)) => {
                ours.len() == theirs.len() && ours.iter().zip(theirs).all(|((a, _), (b, _))| a == b)
            }
            _ => false,
        }
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub fn clear(&mut self) {
        *self = Fields::default();
    }

    /// The entries in key order.
    pub fn iter(&self) -> Iter<'_, V> {
        match &self.0 {
            Held::Few(entries) => Iter::Few(entries.iter()),
            Held::Many(map) => Iter::Many(map.iter()),
        }
    }

    pub fn keys(&self) -> impl Iterator<Item = &CompactString> {
        self.iter().map(|(key, _)| key)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, value)| value)
    }
}

/// [`Fields::iter`]: borrowed entries in key order.
pub enum Iter<'a, V> {
    Few(std::slice::Iter<'a, (CompactString, V)>),
    Many(btree_map::Iter<'a, CompactString, V>),
}

impl<'a, V> Iterator for Iter<'a, V> {
    type Item = (&'a CompactString, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Iter::Few(entries) => entries.next().map(|(key, value)| (key, value)),
            Iter::Many(entries) => entries.next(),
        }
    }
}

/// Owned entries in key order.
pub enum IntoIter<V> {
    Few(std::vec::IntoIter<(CompactString, V)>),
    Many(btree_map::IntoIter<CompactString, V>),
}

impl<V> Iterator for IntoIter<V> {
    type Item = (CompactString, V);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            IntoIter::Few(entries) => entries.next(),
            IntoIter::Many(entries) => entries.next(),
        }
    }
}

impl<V> IntoIterator for Fields<V> {
    type Item = (CompactString, V);
    type IntoIter = IntoIter<V>;

    fn into_iter(self) -> IntoIter<V> {
        match self.0 {
            Held::Few(entries) => IntoIter::Few(entries.into_iter()),
            Held::Many(map) => IntoIter::Many(map.into_iter()),
        }
    }
}

impl<'a, V> IntoIterator for &'a Fields<V> {
    type Item = (&'a CompactString, &'a V);
    type IntoIter = Iter<'a, V>;

    fn into_iter(self) -> Iter<'a, V> {
        self.iter()
    }
}

impl<V: Clone> Fields<V> {
    /// Sets each of `from`'s keys to a copy of its value, as [`Fields::insert`]
    /// would, but into the memory of the value it replaces
    /// ([`Clone::clone_from`]): a session's kept game state takes each update's
    /// values without freeing what the thread that decoded its last update
    /// allocated (`merge_game_state` in jimbus-core).
    pub fn copy_from(&mut self, from: &Fields<V>) {
        if self.is_empty() || self.same_keys(from) {
            return self.clone_from(from);
        }
        for (key, value) in from.iter() {
            match self.get_mut(key) {
                Some(held) => held.clone_from(value),
                None => {
                    self.insert(key.clone(), value.clone());
                }
            }
        }
    }
}

impl<V: Clone> Clone for Fields<V> {
    fn clone(&self) -> Self {
        Fields(self.0.clone())
    }

    /// Entry by entry into this list's own memory while both are short lists,
    /// so that a key or value of the shape it replaces keeps its memory (a
    /// tuple's `clone_from` would clone the value anew).
    fn clone_from(&mut self, source: &Self) {
        match (&mut self.0, &source.0) {
            (Held::Few(to), Held::Few(from)) => {
                to.truncate(from.len());
                let kept = to.len();
                for ((key, value), (from_key, from_value)) in to.iter_mut().zip(from) {
                    key.clone_from(from_key);
                    value.clone_from(from_value);
                }
                to.extend_from_slice(&from[kept..]);
            }
            (to, from) => *to = from.clone(),
        }
    }
}

impl<V> Extend<(CompactString, V)> for Fields<V> {
    fn extend<I: IntoIterator<Item = (CompactString, V)>>(&mut self, entries: I) {
        for (key, value) in entries {
            self.insert(key, value);
        }
    }
}

impl<V> FromIterator<(CompactString, V)> for Fields<V> {
    fn from_iter<I: IntoIterator<Item = (CompactString, V)>>(entries: I) -> Self {
        let mut fields = Fields::default();
        fields.extend(entries);
        fields
    }
}

impl<V, const N: usize> From<[(CompactString, V); N]> for Fields<V> {
    fn from(entries: [(CompactString, V); N]) -> Self {
        entries.into_iter().collect()
    }
}

/// Printed as a map, as the `BTreeMap` it stands for was.
impl<V: std::fmt::Debug> std::fmt::Debug for Fields<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// Equal when they hold the same entries, however they hold them.
impl<V: PartialEq> PartialEq for Fields<V> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl<V> std::ops::Index<&str> for Fields<V> {
    type Output = V;

    fn index(&self, key: &str) -> &V {
        self.get(key).unwrap_or_else(|| panic!("no field {key:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the order and repeats of the keys, and on both sides of
        /// the switch to a map, it holds what a `BTreeMap` holds, in its order.
        #[test]
        fn it_holds_what_a_btree_map_holds(keys in prop::collection::vec("[a-k]{0,2}", 0..40)) {
            let mut fields = Fields::default();
            let mut map = BTreeMap::new();
            for (i, key) in keys.iter().enumerate() {
                let replaced = fields.insert(key.as_str().into(), i);
                prop_assert_eq!(replaced, map.insert(CompactString::from(key.as_str()), i));
                prop_assert_eq!(fields.len(), map.len());
            }
            prop_assert!(fields.iter().eq(map.iter()));
            prop_assert_eq!(format!("{fields:?}"), format!("{map:?}"));
            for key in &keys {
                prop_assert_eq!(fields.get(key), map.get(key.as_str()));
            }
            prop_assert_eq!(fields.get("zz"), None);
            prop_assert!(fields.clone().into_iter().eq(map.clone().into_iter()));
            let collected: Fields<usize> = map.into_iter().collect();
            prop_assert_eq!(&collected, &fields);
        }

        /// `copy_from` and `clone_from` hold what inserting each copied entry
        /// (a `BTreeMap`'s `extend`) and a clone hold, on both sides of the
        /// switch to a map, and leave the source as it was.
        #[test]
        fn copies_hold_what_inserts_hold(
            held in prop::collection::btree_map("[a-k]{0,2}", "[a-z]{0,30}", 0..12),
            from in prop::collection::btree_map("[a-k]{0,2}", "[a-z]{0,30}", 0..12),
        ) {
            let fields = |map: &BTreeMap<String, String>| -> Fields<CompactString> {
                map.iter().map(|(k, v)| (k.as_str().into(), v.as_str().into())).collect()
            };
            let source = fields(&from);
            let mut copied = fields(&held);
            copied.copy_from(&source);
            let mut expected = held.clone();
            expected.extend(from.clone());
            prop_assert_eq!(&copied, &fields(&expected));
            let mut cloned = fields(&held);
            cloned.clone_from(&source);
            prop_assert_eq!(&cloned, &source);
            prop_assert_eq!(&source, &fields(&from));
        }
    }

    /// A copy into entries of the same keys writes over their values where
    /// they lie: the list is not made again.
    #[test]
    fn a_copy_over_the_same_keys_keeps_the_list() {
        let mut kept: Fields<CompactString> = [("a".into(), "1".into()), ("b".into(), "2".into())].into();
        let entries = |fields: &Fields<CompactString>| match &fields.0 {
            Held::Few(entries) => entries.as_ptr(),
            Held::Many(_) => unreachable!("two keys are a short list"),
        };
        let before = entries(&kept);
        kept.copy_from(&[("b".into(), "3".into())].into());
        kept.clone_from(&[("a".into(), "4".into()), ("c".into(), "5".into())].into());
        assert_eq!(entries(&kept), before);
        assert_eq!(kept, [("a".into(), "4".into()), ("c".into(), "5".into())].into());
    }

    #[test]
    fn past_the_small_size_a_map_takes_over() {
        let mut fields = Fields::default();
        for i in (0..SMALL_FIELDS).rev() {
            fields.insert(format!("k{i}").into(), i);
        }
        assert!(matches!(fields.0, Held::Few(_)));
        fields.insert("a".into(), SMALL_FIELDS);
        assert!(matches!(fields.0, Held::Many(_)));
        assert_eq!(fields.keys().next().map(CompactString::as_str), Some("a"));
        fields.clear();
        assert!(fields.is_empty() && matches!(fields.0, Held::Few(_)));
    }
}
