//! The deriver's per-entity state on local disk, behind a bounded cache.
//!
//! [`crate::derive::Deriver`] keeps one state per entity (the fold), one gold
//! summary per entity and each entity's state partition. That grows with the
//! number of entities ever seen, so the deriver keeps them in a [`Store`]: a
//! redb file in a scratch directory, written back by [`Spilled::flush`] and
//! read on demand. Only the entities a step is working on are in memory.
//!
//! The store is scratch, not a source of truth: it is created empty when the
//! deriver opens (which folds bronze again, as before) and deleted when it is
//! dropped. Crash safety stays with the tables' `txn` versions.
//!
//! A [`Spilled`] map with no store ([`Spilled::in_memory`]) is a plain
//! ordered map: what the unit tests and the small in-process folds use.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::NaiveDate;
use pathflow_schemas::PseudoId;
use redb::{ReadOnlyTable, ReadTransaction, ReadableDatabase, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The memory redb may use for its page cache (it keeps written pages in it
/// too, up to half): the store's own share of the deriver's memory.
const PAGE_CACHE_BYTES: usize = 32 * 1024 * 1024;

/// One write transaction in this many is durable (fsynced). The store is
/// scratch, so the others need not reach the disk; but redb reuses the
/// pages a non-durable commit frees only after a durable one, so without
/// them the file would only grow.
const DURABLE_EVERY: u64 = 32;

/// Why the store failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the deriver's scratch store {path}: {reason}")]
pub struct SpillError {
    /// The store's file.
    pub path: String,
    /// What went wrong.
    pub reason: String,
}

/// A scratch redb file. Its name is removed as soon as it is open, so the
/// file goes when the store is dropped, or when the process dies, even by
/// SIGKILL: a crashed deriver leaves nothing behind in the scratch directory.
pub struct Store {
    db: redb::Database,
    path: PathBuf,
    /// The first failure: reads cannot return errors through the fold, so
    /// they record it here and the deriver checks before it commits.
    failed: Mutex<Option<SpillError>>,
    /// Write transactions begun, for [`DURABLE_EVERY`].
    writes: AtomicU64,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Store({})", self.path.display())
    }
}

impl Store {
    /// Creates an empty store in `dir` (a file of its own: several derivers,
    /// in one process or many, may share the directory).
    pub fn create(dir: &Path) -> Result<Arc<Store>, SpillError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("pathflow-derive-{}-{n}.redb", std::process::id()));
        let failed = |reason: String| SpillError {
            path: path.display().to_string(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| {
            failed(format!(
                "cannot create the directory: {e}; set [derive] scratch_dir to a writable local directory"
            ))
        })?;
        let _ = std::fs::remove_file(&path);
        let db = redb::Builder::new()
            .set_cache_size(PAGE_CACHE_BYTES)
            .create(&path)
            .map_err(|e| failed(e.to_string()))?;
        // redb works on the open file from here on; the name is not needed.
        #[cfg(unix)]
        std::fs::remove_file(&path).map_err(|e| failed(e.to_string()))?;
        Ok(Arc::new(Store {
            db,
            path,
            failed: Mutex::new(None),
            writes: AtomicU64::new(0),
        }))
    }

    /// The first failure so far, if any.
    pub fn failure(&self) -> Option<SpillError> {
        self.failed.lock().ok().and_then(|f| f.clone())
    }

    fn fail(&self, reason: impl fmt::Display) {
        if let Ok(mut f) = self.failed.lock()
            && f.is_none()
        {
            *f = Some(SpillError {
                path: self.path.display().to_string(),
                reason: reason.to_string(),
            });
        }
    }

    fn error(&self, reason: impl fmt::Display) -> SpillError {
        self.fail(&reason);
        SpillError {
            path: self.path.display().to_string(),
            reason: reason.to_string(),
        }
    }
}

/// A key with a byte form that sorts as the key does.
pub trait SpillKey: Ord + Clone {
    /// Appends the byte form.
    fn encode(&self, out: &mut Vec<u8>);
    /// Reads the byte form back; `None` when it is not one.
    fn decode(bytes: &[u8]) -> Option<Self>;
}

impl SpillKey for PseudoId {
    fn encode(&self, out: &mut Vec<u8>) {
        // ASCII; a shorter id that is a prefix of a longer one sorts first,
        // as the zero-padded inline form does.
        out.extend_from_slice(self.as_str().as_bytes());
    }
    fn decode(bytes: &[u8]) -> Option<Self> {
        PseudoId::parse(std::str::from_utf8(bytes).ok()?).ok()
    }
}

impl SpillKey for NaiveDate {
    fn encode(&self, out: &mut Vec<u8>) {
        let days = (*self - NaiveDate::default()).num_days() as i32;
        out.extend_from_slice(&((days as u32) ^ 0x8000_0000).to_be_bytes());
    }
    fn decode(bytes: &[u8]) -> Option<Self> {
        let days = (u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?) ^ 0x8000_0000) as i32;
        NaiveDate::default().checked_add_signed(chrono::Duration::days(i64::from(days)))
    }
}

/// A date with an id, or the date alone: `(date, None)` sorts before every
/// id of that date (its byte form is a prefix of theirs), so it bounds a
/// range of one date's ids.
impl SpillKey for (NaiveDate, Option<PseudoId>) {
    fn encode(&self, out: &mut Vec<u8>) {
        self.0.encode(out);
        if let Some(id) = &self.1 {
            id.encode(out);
        }
    }
    fn decode(bytes: &[u8]) -> Option<Self> {
        let date = NaiveDate::decode(bytes)?;
        let rest = bytes.get(4..)?;
        let id = if rest.is_empty() {
            None
        } else {
            Some(PseudoId::decode(rest)?)
        };
        Some((date, id))
    }
}

/// A [`Spilled`] map's table, as a read transaction opens it.
type StoredTable = ReadOnlyTable<&'static [u8], &'static [u8]>;

fn key_bytes<K: SpillKey>(key: &K) -> Vec<u8> {
    let mut out = Vec::with_capacity(40);
    key.encode(&mut out);
    out
}

/// A map from `K` to `V`: the entries in use in memory, the rest in a
/// [`Store`] (or, with no store, everything in memory).
///
/// Reads of an entry not in memory decode it from the store and hand out an
/// owned copy; [`get_or_insert_with`](Spilled::get_or_insert_with) brings it
/// into memory to be changed. [`flush`](Spilled::flush) writes every entry
/// in memory back and forgets it.
pub struct Spilled<K, V> {
    table: &'static str,
    store: Option<Arc<Store>>,
    /// In memory; `None` marks an entry removed but still in the store.
    cache: BTreeMap<K, Option<V>>,
}

impl<K: SpillKey, V> Default for Spilled<K, V> {
    fn default() -> Self {
        Self::in_memory()
    }
}

impl<K: SpillKey + fmt::Debug, V: fmt::Debug> fmt::Debug for Spilled<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.store {
            None => f.debug_map().entries(self.cache.iter()).finish(),
            Some(s) => write!(
                f,
                "Spilled({} in {s:?}, {} in memory)",
                self.table,
                self.cache.len()
            ),
        }
    }
}

impl<K: SpillKey, V> Spilled<K, V> {
    /// Everything in memory, no store.
    pub fn in_memory() -> Self {
        Spilled {
            table: "",
            store: None,
            cache: BTreeMap::new(),
        }
    }
}

impl<K: SpillKey, V: Serialize + DeserializeOwned + Clone> Spilled<K, V> {
    /// Entries kept in table `table` of `store`.
    pub fn on(store: &Arc<Store>, table: &'static str) -> Self {
        Spilled {
            table,
            store: Some(store.clone()),
            cache: BTreeMap::new(),
        }
    }

    fn definition(&self) -> TableDefinition<'static, &'static [u8], &'static [u8]> {
        TableDefinition::new(self.table)
    }

    /// Entries held in memory.
    pub fn in_memory_len(&self) -> usize {
        self.cache.len()
    }

    /// The table in `txn`; `None` before anything was flushed to it.
    fn open_in(&self, txn: &ReadTransaction) -> Result<Option<StoredTable>, String> {
        match txn.open_table(self.definition()) {
            Ok(t) => Ok(Some(t)),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    fn decode(&self, bytes: &[u8]) -> Result<V, String> {
        postcard::from_bytes(bytes)
            .map_err(|e| format!("an entry of {} does not decode: {e}", self.table))
    }

    /// The stored entries of `keys` (memory not consulted), read in one
    /// transaction; a failure is recorded on the store and reads as absent.
    fn stored(&self, store: &Store, keys: &[&K]) -> Vec<Option<V>> {
        let read = || -> Result<Vec<Option<V>>, String> {
            let txn = store.db.begin_read().map_err(|e| e.to_string())?;
            let Some(table) = self.open_in(&txn)? else {
                return Ok(keys.iter().map(|_| None).collect());
            };
            let mut bytes = Vec::with_capacity(40);
            keys.iter()
                .map(|key| {
                    bytes.clear();
                    key.encode(&mut bytes);
                    match table.get(bytes.as_slice()).map_err(|e| e.to_string())? {
                        Some(v) => self.decode(v.value()).map(Some),
                        None => Ok(None),
                    }
                })
                .collect()
        };
        read().unwrap_or_else(|e| {
            store.fail(e);
            keys.iter().map(|_| None).collect()
        })
    }

    fn load(&self, store: &Store, key: &K) -> Option<V> {
        self.stored(store, &[key]).pop().flatten()
    }

    /// The entry for `key`.
    pub fn get(&self, key: &K) -> Option<Cow<'_, V>> {
        if let Some(held) = self.cache.get(key) {
            return held.as_ref().map(Cow::Borrowed);
        }
        let store = self.store.as_ref()?;
        self.load(store, key).map(Cow::Owned)
    }

    /// The entries for `keys`, in their order; those not in memory are read
    /// in one transaction.
    pub fn get_many<'a>(&'a self, keys: &[K]) -> Vec<Option<Cow<'a, V>>> {
        let Some(store) = &self.store else {
            return keys.iter().map(|k| self.get(k)).collect();
        };
        let missing: Vec<&K> = keys
            .iter()
            .filter(|k| !self.cache.contains_key(k))
            .collect();
        let mut loaded = self.stored(store, &missing).into_iter();
        keys.iter()
            .map(|k| match self.cache.get(k) {
                Some(held) => held.as_ref().map(Cow::Borrowed),
                None => loaded.next().flatten().map(Cow::Owned),
            })
            .collect()
    }

    /// The entry for `key`, in memory to be changed; made by `new` when there is none.
    pub fn get_or_insert_with(&mut self, key: &K, new: impl FnOnce() -> V) -> &mut V {
        if !matches!(self.cache.get(key), Some(Some(_))) {
            let loaded = match (&self.store, self.cache.get(key)) {
                (Some(store), None) => self.load(store, key),
                _ => None,
            };
            self.cache
                .insert(key.clone(), Some(loaded.unwrap_or_else(new)));
        }
        match self.cache.get_mut(key) {
            Some(Some(v)) => v,
            _ => unreachable!("inserted above"),
        }
    }

    /// Sets the entry for `key`.
    pub fn insert(&mut self, key: K, value: V) {
        self.cache.insert(key, Some(value));
    }

    /// Removes the entry for `key`; returns what it was.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        match &self.store {
            None => self.cache.remove(key).flatten(),
            Some(store) => {
                let old = match self.cache.get_mut(key) {
                    Some(held) => held.take(),
                    None => self.load(store, key),
                };
                self.cache.insert(key.clone(), None);
                old
            }
        }
    }

    /// Removes the entry for `key`, without reading what it was.
    pub fn delete(&mut self, key: &K) {
        match &self.store {
            None => {
                self.cache.remove(key);
            }
            Some(_) => {
                self.cache.insert(key.clone(), None);
            }
        }
    }

    /// Writes every entry in memory to the store and forgets it (nothing
    /// to do without a store).
    pub fn flush(&mut self) -> Result<(), SpillError> {
        let Some(store) = self.store.clone() else {
            return Ok(());
        };
        if self.cache.is_empty() {
            return Ok(());
        }
        let write = || -> Result<(), String> {
            let mut txn = store.db.begin_write().map_err(|e| e.to_string())?;
            // A deriver's step flushes a dozen maps: fsyncing each was about
            // 9 ms of a 15 ms fold of 200 events (transform bench).
            if !store
                .writes
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(DURABLE_EVERY)
            {
                txn.set_durability(redb::Durability::None)
                    .map_err(|e| e.to_string())?;
            }
            {
                let mut table = txn
                    .open_table(self.definition())
                    .map_err(|e| e.to_string())?;
                let mut key = Vec::with_capacity(40);
                let mut value = Vec::new();
                for (k, v) in &self.cache {
                    key.clear();
                    k.encode(&mut key);
                    match v {
                        Some(v) => {
                            value.clear();
                            value = postcard::to_extend(v, std::mem::take(&mut value))
                                .map_err(|e| format!("an entry does not encode: {e}"))?;
                            table
                                .insert(key.as_slice(), value.as_slice())
                                .map_err(|e| e.to_string())?;
                        }
                        None => {
                            table.remove(key.as_slice()).map_err(|e| e.to_string())?;
                        }
                    }
                }
            }
            txn.commit().map_err(|e| e.to_string())
        };
        write().map_err(|e| store.error(format!("writing {}: {e}", self.table)))?;
        self.cache.clear();
        Ok(())
    }

    /// Takes every entry held in memory, in key order, leaving none (an
    /// in-memory map is emptied; the store, if any, is not consulted).
    pub fn take_in_memory(&mut self) -> impl Iterator<Item = (K, V)> + use<K, V> {
        std::mem::take(&mut self.cache)
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
    }

    /// Up to `n` keys after `after` (from the first when `None`), in order.
    pub fn keys_after(&self, after: Option<&K>, n: usize) -> Vec<K> {
        let mut out = Vec::with_capacity(n.min(1024));
        self.visit(
            after.map_or(Bound::Unbounded, Bound::Excluded),
            Bound::Unbounded,
            |k, _| {
                out.push(k.clone());
                out.len() < n
            },
        );
        out
    }

    /// Keys from `from` (inclusive) up to `to` (exclusive), in order.
    pub fn keys_between(&self, from: &K, to: &K) -> Vec<K> {
        let mut out = Vec::new();
        self.visit(Bound::Included(from), Bound::Excluded(to), |k, _| {
            out.push(k.clone());
            true
        });
        out
    }

    /// Every entry, in key order (memory and store merged).
    pub fn entries(&self) -> Vec<(K, V)> {
        let mut out = Vec::new();
        self.visit(Bound::Unbounded, Bound::Unbounded, |k, v| {
            out.push((k.clone(), v.clone()));
            true
        });
        out
    }

    /// Every value, in key order.
    pub fn values(&self) -> Vec<V> {
        let mut out = Vec::new();
        self.visit(Bound::Unbounded, Bound::Unbounded, |_, v| {
            out.push(v.clone());
            true
        });
        out
    }

    /// Calls `f` on the entries between the bounds in key order until it
    /// returns false: the store's entries merged with those in memory, which
    /// win (and hide removed ones).
    fn visit(&self, from: Bound<&K>, to: Bound<&K>, mut f: impl FnMut(&K, &V) -> bool) {
        let mut memory = self.cache.range::<K, _>((from, to)).peekable();
        let Some(store) = &self.store else {
            for (k, v) in memory {
                if let Some(v) = v
                    && !f(k, v)
                {
                    return;
                }
            }
            return;
        };
        let mut scan = || -> Result<(), String> {
            let txn = store.db.begin_read().map_err(|e| e.to_string())?;
            let table = self.open_in(&txn)?;
            let bound = |b: Bound<&K>| match b {
                Bound::Included(k) => Bound::Included(key_bytes(k)),
                Bound::Excluded(k) => Bound::Excluded(key_bytes(k)),
                Bound::Unbounded => Bound::Unbounded,
            };
            let (lo, hi) = (bound(from), bound(to));
            fn as_slice(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
                match b {
                    Bound::Included(v) => Bound::Included(v.as_slice()),
                    Bound::Excluded(v) => Bound::Excluded(v.as_slice()),
                    Bound::Unbounded => Bound::Unbounded,
                }
            }
            let mut stored = match &table {
                Some(t) => Some(
                    t.range::<&[u8]>((as_slice(&lo), as_slice(&hi)))
                        .map_err(|e| e.to_string())?,
                ),
                None => None,
            };
            let mut next_stored = || -> Result<Option<(K, V)>, String> {
                let Some(range) = stored.as_mut() else {
                    return Ok(None);
                };
                let Some(item) = range.next() else {
                    return Ok(None);
                };
                let (k, v) = item.map_err(|e| e.to_string())?;
                let key = K::decode(k.value())
                    .ok_or_else(|| format!("a key of {} does not decode", self.table))?;
                Ok(Some((key, self.decode(v.value())?)))
            };
            let mut pending = next_stored()?;
            loop {
                let take_memory = match (memory.peek(), &pending) {
                    (None, None) => return Ok(()),
                    (Some(_), None) => true,
                    (None, Some(_)) => false,
                    (Some((mk, _)), Some((sk, _))) => *mk <= sk,
                };
                if take_memory {
                    let Some((mk, mv)) = memory.next() else {
                        return Ok(());
                    };
                    if pending.as_ref().is_some_and(|(sk, _)| sk == mk) {
                        pending = next_stored()?;
                    }
                    if let Some(v) = mv
                        && !f(mk, v)
                    {
                        return Ok(());
                    }
                } else if let Some((sk, sv)) = pending.take() {
                    if !f(&sk, &sv) {
                        return Ok(());
                    }
                    pending = next_stored()?;
                }
            }
        };
        if let Err(e) = scan() {
            store.fail(format!("reading {}: {e}", self.table));
        }
    }
}

impl<K: SpillKey, V: Serialize + DeserializeOwned + Clone + PartialEq> PartialEq for Spilled<K, V> {
    /// Equal when every entry is (wherever each side keeps them).
    fn eq(&self, other: &Self) -> bool {
        self.entries() == other.entries()
    }
}

impl<K: SpillKey, V: Serialize + DeserializeOwned + Clone + PartialEq> Eq for Spilled<K, V> {}

impl<K: SpillKey, V: Clone> Clone for Spilled<K, V> {
    /// A copy of an in-memory map. A map on a store shares the store (a
    /// flush of either is seen by both): derivers never clone theirs.
    fn clone(&self) -> Self {
        Spilled {
            table: self.table,
            store: self.store.clone(),
            cache: self.cache.clone(),
        }
    }
}

impl<K, V> Serialize for Spilled<K, V>
where
    K: SpillKey + Serialize,
    V: Serialize + DeserializeOwned + Clone,
{
    /// As a map of every entry.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let entries = self.entries();
        let mut map = serializer.serialize_map(Some(entries.len()))?;
        for (k, v) in &entries {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de, K, V> serde::Deserialize<'de> for Spilled<K, V>
where
    K: SpillKey + serde::Deserialize<'de>,
    V: serde::Deserialize<'de>,
{
    /// Into memory.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let map = BTreeMap::<K, V>::deserialize(deserializer)?;
        Ok(Spilled {
            table: "",
            store: None,
            cache: map.into_iter().map(|(k, v)| (k, Some(v))).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u32) -> PseudoId {
        PseudoId::from_digest(&[n as u8; 16])
    }

    type Map = Spilled<PseudoId, Vec<u32>>;

    fn maps() -> (Map, Map, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap();
        (Spilled::in_memory(), Spilled::on(&store, "t"), dir)
    }

    #[test]
    fn a_spilled_map_answers_as_an_in_memory_one_across_flushes() {
        let (mut memory, mut spilled, _dir) = maps();
        for round in 0..4u32 {
            for n in 0..50u32 {
                if (n + round) % 3 == 0 {
                    memory.get_or_insert_with(&id(n), Vec::new).push(round);
                    spilled.get_or_insert_with(&id(n), Vec::new).push(round);
                }
                if (n * 7 + round) % 11 == 0 {
                    assert_eq!(memory.remove(&id(n)), spilled.remove(&id(n)));
                }
            }
            assert_eq!(memory.entries(), spilled.entries());
            if round % 2 == 1 {
                spilled.flush().unwrap();
                assert_eq!(spilled.in_memory_len(), 0);
            }
            assert_eq!(memory.entries(), spilled.entries());
            for n in 0..50u32 {
                assert_eq!(memory.get(&id(n)), spilled.get(&id(n)));
            }
            let first = memory.keys_after(None, 7);
            assert_eq!(first, spilled.keys_after(None, 7));
            assert_eq!(
                memory.keys_after(first.last(), 100),
                spilled.keys_after(first.last(), 100)
            );
        }
        assert!(memory == spilled);
    }

    #[test]
    fn dated_keys_sort_by_date_then_id_and_a_date_alone_bounds_its_ids() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap();
        let mut members: Spilled<(NaiveDate, Option<PseudoId>), ()> = Spilled::on(&store, "m");
        let day = |d: u32| {
            NaiveDate::from_ymd_opt(1969 + (d % 3) as i32, 1 + d % 12, 1 + d % 28).unwrap()
        };
        for d in 0..40 {
            members.insert((day(d % 5), Some(id(d))), ());
        }
        members.flush().unwrap();
        members.insert((day(2), Some(id(99))), ());
        members.delete(&(day(2), Some(id(2))));
        let all: Vec<_> = members.entries().into_iter().map(|(k, _)| k).collect();
        let mut sorted = all.clone();
        sorted.sort();
        assert_eq!(all, sorted);
        assert_eq!(all.len(), 40);
        let (from, to) = ((day(2), None), (day(2).succ_opt().unwrap(), None));
        let of_day: Vec<_> = all.iter().filter(|k| k.0 == day(2)).cloned().collect();
        assert_eq!(of_day.len(), 8);
        assert!(of_day.contains(&(day(2), Some(id(99)))));
        assert_eq!(members.keys_between(&from, &to), of_day);
    }

    #[test]
    fn the_store_leaves_no_file_behind_even_while_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let mut map: Spilled<PseudoId, u32> = Spilled::on(&store, "t");
        map.insert(id(1), 7);
        map.flush().unwrap();
        assert_eq!(map.get(&id(1)).as_deref(), Some(&7));
        assert_eq!(
            map.get_many(&[id(2), id(1)]),
            vec![None, Some(Cow::Owned(7))]
        );
        assert!(store.failure().is_none());
    }
}
