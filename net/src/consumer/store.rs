//! Where a shard's durable consumers are kept on disk: a snapshot of every
//! consumer (`consumers.json`) and an ack journal appended between snapshots
//! (`consumers.journal`), both beside the shard's segments.
//!
//! An Ack costs one small journal append and one `fdatasync` (through
//! io_uring), whatever the number of consumers; the snapshot is rewritten only
//! when a consumer is created or removed, when the journal passes
//! [`COMPACT_AT`] bytes, and at shutdown. A snapshot replacement that fails
//! deletes its temporary file at once, so a full disk does not fill up with
//! `consumers.tmpNN` files. This module must never decide what a consumer
//! delivers: it only stores what the pump hands it.

use crate::bus::ConsumerOptions;
use crate::log::{replace_file, LogError};
use glommio::io::{BufferedFile, OpenOptions};
use jimbus_core::consumer_state::{self, DoneSet, JournalEntry, SnapshotEntry};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub type Snapshot = BTreeMap<String, SnapshotEntry<ConsumerOptions>>;

const SNAPSHOT: &str = "consumers.json";
const JOURNAL: &str = "consumers.journal";
/// The journal is folded into a new snapshot once it is this large.
pub const COMPACT_AT: u64 = 256 << 10;

/// A consumer as read back at start: its snapshot entry and done offsets.
pub type Restored = (SnapshotEntry<ConsumerOptions>, DoneSet);

pub struct ConsumerStore {
    dir: PathBuf,
    journal: Option<BufferedFile>,
    /// Bytes of whole entries in the journal: where the next one is written.
    journal_len: u64,
}

fn io(e: LogError) -> std::io::Error {
    match e {
        LogError::Io(io) => io,
        other => std::io::Error::other(other.to_string()),
    }
}

impl ConsumerStore {
    /// Reads the snapshot and replays the journal over it; deletes temporary
    /// files a failed or interrupted snapshot left behind.
    pub fn load(dir: &Path) -> std::io::Result<(Self, BTreeMap<String, Restored>, bool)> {
        remove_temporaries(dir);
        let snapshot: Snapshot = match std::fs::read(dir.join(SNAPSHOT)) {
            Ok(bytes) => consumer_state::decode_snapshot(&bytes).map_err(std::io::Error::other)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e),
        };
        let mut consumers: BTreeMap<String, Restored> =
            snapshot.into_iter().map(|(name, entry)| (name, (entry.clone(), entry.done()))).collect();
        let journal = match std::fs::read(dir.join(JOURNAL)) {
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
        let written = write_at(file, &bytes, at).await;
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
        if let Err(e) = replace_file(&self.dir.join(SNAPSHOT), &bytes).await {
            remove_temporaries(&self.dir);
            return Err(io(e));
        }
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
            let path = self.dir.join(JOURNAL);
            let existed = path.exists();
            let file = OpenOptions::new().read(true).write(true).create(true).buffered_open(&path).await?;
            if !existed {
                let dir = glommio::io::Directory::open(&self.dir).await?;
                dir.sync().await?;
                dir.close().await?;
            }
            self.journal = Some(file);
        }
        Ok(self.journal.as_ref().expect("opened above"))
    }
}

async fn write_at(file: &BufferedFile, data: &[u8], mut at: u64) -> std::io::Result<()> {
    let mut rest = data;
    while !rest.is_empty() {
        let written = file.write_at(rest.to_vec(), at).await?;
        if written == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::WriteZero, "journal write wrote nothing"));
        }
        rest = &rest[written..];
        at += written as u64;
    }
    Ok(())
}

/// Deletes `consumers.tmpNN` files (a replacement that failed or was cut short).
fn remove_temporaries(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name.to_str().is_some_and(|n| n.starts_with("consumers.tmp")) {
            if let Err(e) = std::fs::remove_file(entry.path()) {
                tracing::warn!(file = ?entry.file_name(), error = %e, "cannot delete a temporary consumers file");
            }
        }
    }
}
