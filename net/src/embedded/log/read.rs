//! Reading one shard's log for subscribers: records from the in-memory tail
//! as views, or from the segment files in reads no larger than what the
//! caller may keep, and a record too large for that measured rather than
//! read when the caller asks. It must never write the log or change its
//! index.

use super::{Located, LogError, SharedIndex};
use bytes::Bytes;
use glommio::io::BufferedFile;
use jimbus_core::record::{self, FrameError};

/// The most bytes one read of a segment brings (a larger record is read whole).
const READ_CHUNK: u64 = 256 * 1024;
/// The smallest read of a segment that asks for fewer bytes than [`READ_CHUNK`].
const MIN_READ_CHUNK: u64 = 16 * 1024;

/// Reads up to `max` framed records starting at `from`, and no more than
/// `max_bytes` of them unless the first alone is larger. Returns the frames
/// and the offset after the last one. Every frame read from disk has had its
/// checksum checked, and the tail's were framed here, so a caller reads them
/// with [`record::decode_without_checksum`].
pub async fn read_frames(
    index: &SharedIndex,
    from: u64,
    max: usize,
    max_bytes: usize,
) -> Result<(Vec<Bytes>, u64), LogError> {
    match read_log(index, from, max, max_bytes, true).await? {
        LogRead::Frames(frames, next) => Ok((frames, next)),
        // Only asked for when the first record may be left unread.
        LogRead::Larger(_) => Ok((Vec::new(), from)),
    }
}

/// What [`read_log`] found.
pub enum LogRead {
    /// Frames and the offset after the last one, as [`read_frames`] returns them.
    Frames(Vec<Bytes>, u64),
    /// The first record is on disk, needs a read of its own and is larger
    /// than the bytes asked for: its framed length. It was not read.
    Larger(usize),
}

/// [`read_frames`], except that unless `read_larger`, a first record on disk
/// that needs a read of its own larger than `max_bytes` is not read but
/// measured ([`LogRead::Larger`]): a subscription reads it only once its
/// subscriber has room for it, so that reads it cannot keep are never made.
pub async fn read_log(
    index: &SharedIndex,
    from: u64,
    max: usize,
    max_bytes: usize,
    read_larger: bool,
) -> Result<LogRead, LogError> {
    let located = {
        let log = index.borrow();
        let from = from.max(log.start());
        if from >= log.end {
            return Ok(LogRead::Frames(Vec::new(), from));
        }
        if let Some(frames) = log.tail.frames_from(from, max, max_bytes) {
            let next = from + frames.len() as u64;
            return Ok(LogRead::Frames(frames, next));
        }
        log.locate(from)
    };
    let Some(Located { file, first, mut pos, mut available }) = located else {
        return Ok(LogRead::Frames(Vec::new(), from));
    };
    // The records from the mark up to `from` (fewer than POSITION_STRIDE) are
    // read and stepped over; reading stops at the first chunk that yields a frame.
    // Reads no larger than what is kept, but not so small that the records
    // stepped over take many: every read in flight is a buffer held.
    let chunk = (max_bytes as u64).clamp(MIN_READ_CHUNK, READ_CHUNK);
    let larger_than = if read_larger { usize::MAX } else { max_bytes };
    let (mut frames, mut offset, mut held) = (Vec::new(), first, 0);
    while frames.is_empty() && available > 0 {
        let bytes = match read_chunk(&file, pos, available.min(chunk), larger_than).await? {
            Chunk::Read(bytes) => bytes,
            Chunk::Larger(needed) if offset >= from => return Ok(LogRead::Larger(needed)),
            Chunk::Larger(needed) => {
                // Before `from`: stepped over unread.
                (offset, pos, available) = (offset + 1, pos + needed as u64, available.saturating_sub(needed as u64));
                continue;
            }
        };
        let mut at = 0;
        while frames.len() < max {
            let Ok(rec) = record::decode(&bytes[at..]) else { break };
            let len = rec.framed_len();
            if offset >= from {
                if !frames.is_empty() && held + len > max_bytes {
                    break;
                }
                held += len;
                frames.push(bytes.slice(at..at + len));
            }
            (offset, at) = (offset + 1, at + len);
        }
        if at == 0 {
            break; // nothing whole here: the end of what is written, or a damaged record
        }
        (pos, available) = (pos + at as u64, available.saturating_sub(at as u64));
    }
    Ok(LogRead::Frames(frames, offset.max(from)))
}

/// One read of a segment.
enum Chunk {
    Read(Bytes),
    /// The record at the position is larger than the caller would read: its framed length.
    Larger(usize),
}

/// Reads up to [`READ_CHUNK`] bytes of a segment at `pos`, or the whole
/// record there when it is larger, unless it is larger than `larger_than`.
async fn read_chunk(file: &BufferedFile, pos: u64, available: u64, larger_than: usize) -> Result<Chunk, LogError> {
    let chunk = available.min(READ_CHUNK).max(record::HEADER_LEN as u64);
    let mut bytes = Bytes::copy_from_slice(&file.read_at(pos, chunk as usize).await?);
    // Only the length matters here: the caller checks each record's checksum.
    if let Err(FrameError::Torn { needed, .. }) = record::decode_without_checksum(&bytes) {
        if needed > larger_than {
            return Ok(Chunk::Larger(needed));
        }
        bytes = Bytes::copy_from_slice(&file.read_at(pos, needed).await?);
    }
    Ok(Chunk::Read(bytes))
}
