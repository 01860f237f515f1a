//! Where a shard's durable consumers are kept on disk: a snapshot of every
//! consumer (`consumers.json`) and an ack journal appended between snapshots
//! (`consumers.journal`), both beside the shard's segments.
//!
//! An Ack costs one small journal append and one `fdatasync` (through
//! io_uring), whatever the number of consumers; the snapshot is rewritten only
//! when a consumer is created or removed, when the journal passes
//! [`COMPACT_AT`] bytes, and at shutdown. A snapshot replacement that fails
//! deletes its temporary file at once ([`layout::replace_file`]), so a full
//! disk does not fill up with temporaries. This module must never decide what a consumer
//! delivers: it only stores what the pump hands it.

use super::layout;
use crate::bus::ConsumerOptions;
use glommio::io::{BufferedFile, OpenOptions};
use jimbus_core::consumer_state::{self, DoneSet, JournalEntry, SnapshotEntry};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub type Snapshot = BTreeMap<String, SnapshotEntry<ConsumerOptions>>;

/// The journal is folded into a new snapshot once it is this large.
pub const COMPACT_AT: u64 = 256 << 10;

/// A consumer as read back at start: its snapshot entry and done offsets.
pub type Restored = (SnapshotEntry<ConsumerOptions>, DoneSet);

pub struct ConsumerStore {
    /// The shard's directory (see [`layout`]).
    dir: PathBuf,
    /// The journal, opened on first append.
    journal: Option<BufferedFile>,
    /// Bytes of whole entries in the journal: where the next one is written.
    journal_len: u64,
}

impl ConsumerStore {
    /// Reads the snapshot and replays the journal over it (after the log's
    /// start deleted temporary files, see [`layout::prepare`]).
    pub fn load(dir: &Path) -> std::io::Result<(Self, BTreeMap<String, Restored>, bool)> {
        let snapshot: Snapshot = match std::fs::read(layout::consumers_snapshot(dir)) {
            Ok(bytes) => consumer_state::decode_snapshot(&bytes).map_err(std::io::Error::other)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e),
        };
        let mut consumers: BTreeMap<String, Restored> =
            snapshot.into_iter().map(|(name, entry)| (name, (entry.clone(), entry.done()))).collect();
        let journal = match std::fs::read(layout::consumers_journal(dir)) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let (entries, valid) = consumer_state::decode_journal(&journal);
        consumer_state::replay(&mut consumers, &entries);
        // The caller folds a non-empty journal into a snapshot; until then,
        // appends go after its last whole entry.
        let store = Self { dir: dir.to_path_buf(), journal: None, journal_len: valid as u64 };
        Ok((store, consumers, !journal.is_empty()))
    }

    pub fn needs_compaction(&self) -> bool {
        self.journal_len >= COMPACT_AT
    }

    /// Appends `entries` to the journal and makes them durable.
    pub async fn append(&mut self, entries: &[JournalEntry]) -> std::io::Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut bytes = Vec::new();
        entries.iter().for_each(|e| e.encode(&mut bytes));
        let at = self.journal_len;
        let file = self.journal().await?;
        let written = layout::write_all(file, &bytes, at).await;
        let synced = match written {
            Ok(()) => file.fdatasync().await.map_err(std::io::Error::from),
            Err(e) => Err(e),
        };
        match synced {
            Ok(()) => {
                self.journal_len = at + bytes.len() as u64;
                Ok(())
            }
            Err(e) => {
                // What was half written past the last whole entry is cut (a
                // later read would stop there anyway); the next append goes
                // to the same place.
                let _ = file.truncate(at).await;
                Err(e)
            }
        }
    }

    /// Writes `snapshot` in place of the old one, then empties the journal it
    /// supersedes. A crash in between replays the old journal over the new
    /// snapshot, which changes nothing.
    pub async fn compact(&mut self, snapshot: &Snapshot) -> std::io::Result<()> {
        let bytes = consumer_state::encode_snapshot(snapshot);
        layout::replace_file(&layout::consumers_snapshot(&self.dir), &bytes).await?;
        if self.journal_len > 0 {
            let file = self.journal().await?;
            file.truncate(0).await?;
            file.fdatasync().await?;
            self.journal_len = 0;
        }
        Ok(())
    }

    /// The open journal, created (and its directory entry made durable) on first use.
    async fn journal(&mut self) -> std::io::Result<&BufferedFile> {
        if self.journal.is_none() {
            let path = layout::consumers_journal(&self.dir);
            let existed = path.exists();
            let file = OpenOptions::new().read(true).write(true).create(true).buffered_open(&path).await?;
            if !existed {
                layout::sync_dir(&self.dir).await?;
            }
            self.journal = Some(file);
        }
        Ok(self.journal.as_ref().expect("opened above"))
    }
}
