//! The newest committed records of a shard's log, kept in memory for the
//! subscribers that keep up: each commit's whole buffer, and where each of
//! its records lies in it. A record is handed out as a slice of its commit's
//! buffer when it is read, not kept as one: a slice kept per record cost two
//! atomic operations on the buffer's count for every record stored, read or
//! not (docs/perf.md, "Fortieth pass"). It also keeps the emptied buffers
//! that the next commits stage into, and the memory account of both.
//!
//! It must never touch a file, and never hold more than its cap of buffers
//! beyond the newest commit's.

use bytes::Bytes;
use std::collections::VecDeque;
use std::ops::Range;

/// Commit buffers kept for reuse per shard, and the largest kept. One is
/// enough under load, where each commit's publish lets go of about one older
/// commit; more would keep pages resident that an idle shard gives back (a
/// pool of four raised peak RSS by 25-45 MiB under jimbus-load).
const SPARE_BUFFERS: usize = 1;
const MAX_SPARE_BYTES: usize = 1 << 20;
/// Below this, a spare buffer is reused whatever the next commit's size.
const MIN_SPARE_BYTES: usize = 64 << 10;

/// The tail: records by offset, from `first` on.
pub(in crate::embedded) struct Tail {
    /// Offset of the first record held.
    pub(in crate::embedded) first: u64,
    /// Where each record held lies in its commit's buffer, oldest first.
    pub(in crate::embedded) frames: VecDeque<Range<usize>>,
    /// The commits whose records are held, oldest first.
    pub(super) commits: VecDeque<TailCommit>,
    /// The memory the commits hold: their buffers' capacity, not only their
    /// records, since a staging buffer that grew by doubling can be twice
    /// its records (counting records alone let the tail hold about twice its
    /// cap). Kept under `cap`, except for the newest commit.
    pub(super) bytes: usize,
    pub(super) cap: usize,
    /// Emptied buffers of commits the tail has let go of and no reader holds,
    /// for the next commits to stage into: their pages are already mapped, so
    /// a commit does not fault in and zero fresh ones (as a new buffer does
    /// once the allocator has returned the old one to the system).
    pub(super) spare: Vec<Vec<u8>>,
}

/// A commit whose records are in the tail.
pub(super) struct TailCommit {
    /// The offset after its last record.
    pub(super) end: u64,
    /// Its whole buffer, which the tail's frames lie in.
    pub(super) data: Bytes,
    /// The memory that buffer holds: its capacity.
    pub(super) pinned: usize,
}

impl Tail {
    /// An empty tail whose first record will be at `first`, holding up to `cap` bytes.
    pub(in crate::embedded) fn new(first: u64, cap: usize) -> Self {
        Self { first, frames: VecDeque::new(), commits: VecDeque::new(), bytes: 0, cap, spare: Vec::new() }
    }

    /// Notes the record at `offset`, which lies at `frame` in the buffer of
    /// the commit that [`Tail::push_commit`] adds next.
    pub(super) fn push_frame(&mut self, offset: u64, frame: Range<usize>) {
        if self.frames.is_empty() {
            self.first = offset;
        }
        self.frames.push_back(frame);
    }

    /// Adds a commit whose frames were pushed, then lets go of the oldest
    /// commits, records and buffer together, while the tail holds more than
    /// its cap (the newest one always stays).
    pub(super) fn push_commit(&mut self, commit: TailCommit) {
        self.bytes += commit.pinned;
        self.commits.push_back(commit);
        while self.bytes > self.cap && self.commits.len() > 1 {
            let Some(oldest) = self.commits.pop_front() else { break };
            while self.first < oldest.end && self.frames.pop_front().is_some() {
                self.first += 1;
            }
            self.bytes -= oldest.pinned;
            self.keep_spare(oldest.data);
        }
    }

    /// Up to `max` records from `from`, and no more than `max_bytes` of them
    /// unless the first alone is larger; `None` when `from` is not held.
    pub(super) fn frames_from(&self, from: u64, max: usize, max_bytes: usize) -> Option<Vec<Bytes>> {
        if from < self.first || self.frames.is_empty() {
            return None;
        }
        let skip = (from - self.first) as usize;
        let mut commit = self.commits.partition_point(|c| c.end <= from);
        let (mut frames, mut held) = (Vec::new(), 0);
        for (offset, frame) in (from..).zip(self.frames.iter().skip(skip).take(max)) {
            held += frame.len();
            if !frames.is_empty() && held > max_bytes {
                break;
            }
            while self.commits[commit].end <= offset {
                commit += 1;
            }
            frames.push(self.commits[commit].data.slice(frame.clone()));
        }
        Some(frames)
    }

    /// Takes back the buffer of a commit that left the tail, unless a reader
    /// still holds a record of it (then it is left to the reader).
    fn keep_spare(&mut self, data: Bytes) {
        if self.spare.len() >= SPARE_BUFFERS || data.len() > MAX_SPARE_BYTES {
            return;
        }
        let held = data.len();
        // A buffer much larger than what it held would pin that much for
        // every commit it carries through the tail: let it go instead.
        if let Ok(buffer) = data.try_into_mut().map(Vec::from) {
            if buffer.capacity() <= 2 * held {
                let mut buffer = buffer;
                buffer.clear();
                self.spare.push(buffer);
            }
        }
    }

    /// An empty buffer for the next commit, with room for `bytes`: a spare
    /// one when it is no more than twice that large, so the tail holds about
    /// what its records need.
    pub(super) fn commit_buffer(&mut self, bytes: usize) -> Vec<u8> {
        let mut buffer = match self.spare.pop() {
            Some(spare) if spare.capacity() <= 2 * bytes.max(MIN_SPARE_BYTES) => spare,
            _ => Vec::new(),
        };
        buffer.reserve(bytes);
        buffer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Commits one 8-byte record at `offset` as `publish` does; returns where its buffer lies.
    fn commit(tail: &mut Tail, offset: u64) -> (*const u8, Bytes) {
        let mut buffer = tail.commit_buffer(8);
        buffer.extend_from_slice(&[offset as u8; 8]);
        let pinned = buffer.capacity();
        let data = Bytes::from(buffer);
        tail.push_frame(offset, 0..8);
        tail.push_commit(TailCommit { end: offset + 1, data: data.clone(), pinned });
        (data.as_ptr(), data)
    }

    #[test]
    fn a_commit_buffer_is_reused_once_the_tail_and_every_reader_let_go() {
        let mut tail = Tail::new(0, 8);
        let (_, first) = commit(&mut tail, 0);
        let read = first.slice(0..4); // a reader still holds a record of commit 0
        drop(first);
        let (second_at, second) = commit(&mut tail, 1); // the tail lets go of commit 0
        assert!(tail.spare.is_empty(), "a buffer a reader holds is never reused");
        assert_eq!(&read[..], &[0; 4], "and what the reader holds is intact");
        drop(second);
        let (_, third) = commit(&mut tail, 2); // the tail lets go of commit 1
        assert_eq!(tail.spare.len(), 1);
        drop(third);
        let (fourth_at, _) = commit(&mut tail, 3);
        assert_eq!(fourth_at, second_at, "commit 3 is staged in commit 1's buffer");
        assert_eq!(tail.frames_from(3, 8, 64).expect("held")[0][..], [3; 8]);
    }

    #[test]
    fn the_tail_is_capped_by_what_its_buffers_hold_not_by_their_records() {
        let mut tail = Tail::new(0, 64);
        for offset in 0..4u64 {
            // 8 bytes of record in a buffer that holds 32.
            let mut buffer = Vec::with_capacity(32);
            buffer.extend_from_slice(&[offset as u8; 8]);
            let pinned = buffer.capacity();
            tail.push_frame(offset, 0..8);
            tail.push_commit(TailCommit { end: offset + 1, data: Bytes::from(buffer), pinned });
        }
        assert_eq!(tail.bytes, 64, "two 32-byte buffers, though only 16 bytes of records");
        assert_eq!((tail.first, tail.frames.len(), tail.commits.len()), (2, 2, 2));
    }

    /// Records of several commits, of several sizes, read from any offset
    /// with any limits: each is the bytes it was committed with, in order.
    #[test]
    fn records_are_read_from_their_own_commits_within_the_limits() {
        let mut tail = Tail::new(0, 1 << 20);
        let mut offset = 0u64;
        for records in [3usize, 1, 4] {
            let mut buffer = Vec::new();
            for _ in 0..records {
                let from = buffer.len();
                buffer.extend(std::iter::repeat_n(offset as u8, 1 + offset as usize));
                tail.push_frame(offset, from..buffer.len());
                offset += 1;
            }
            let pinned = buffer.capacity();
            tail.push_commit(TailCommit { end: offset, data: Bytes::from(buffer), pinned });
        }
        for from in 0..offset {
            let all = tail.frames_from(from, usize::MAX, usize::MAX).expect("held");
            assert_eq!(all.len() as u64, offset - from);
            for (i, frame) in all.iter().enumerate() {
                let at = from + i as u64;
                assert_eq!(frame[..], vec![at as u8; 1 + at as usize][..], "record {at}");
            }
            assert_eq!(tail.frames_from(from, 2, usize::MAX).expect("held").len(), 2.min(all.len()));
            // The first record is given whole whatever the bytes allowed.
            let first = tail.frames_from(from, usize::MAX, 0).expect("held");
            assert_eq!(first.len(), 1);
            let two = (2 * from + 3) as usize; // records `from` and `from + 1`
            assert_eq!(tail.frames_from(from, usize::MAX, two).expect("held").len(), 2.min(all.len()));
        }
        assert!(tail.frames_from(offset, 1, 1).is_some_and(|f| f.is_empty()));
    }
}
