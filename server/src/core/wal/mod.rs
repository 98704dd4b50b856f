//! The write-ahead log: append-only files of length-prefixed, CRC-checked records, chained by sequence number.
//!
//! A write is acknowledged only after its record is on disk (`fdatasync`), so an acknowledged upsert or delete
//! survives `kill -9` and power loss. Group commit: the collection's sequencer thread writes every record queued
//! while the previous fsync ran, fsyncs once, then acknowledges them all (one fsync per batch, not per request).
//!
//! ```text
//! file      = header record* zero-fill                        (versions 2, 3; version 1 files have no fill)
//! header v3 = "CHMFWAL1" | version u32 (=3) | reserved u32 | first_seq u64 | capacity u64 | crc32 u32 | 0 u32
//!             40 bytes, crc32 over the 32 bytes before it; version 2 the same; version 1 = the first 16 bytes
//! record    = len u32 LE | crc32 u32 LE | seq u64 LE | kind u8 | body          len = 9 + |body|
//!             crc32 (IEEE) covers seq, kind and body
//! upsert body (kind 1) = n u32 | n x (id_len u32 | id | dim u32 | n_tokens u32 | f32 LE x n_tokens*dim
//!                                    | meta_len u32 | meta JSON)
//! delete body (kind 2) = n u32 | n x (id_len u32 | id)
//! seal (kind 3)        = no body; seq = first_seq of the next file. Written when a file is closed.
//! upsert body (kind 4) = kind 1 with f16 LE tokens (version 3): written when every token value of the batch is
//!                        exactly an f16 (as when the client sent f16), so it is lossless at half the bytes
//! ```
//!
//! Version 3 adds kind 4 and nothing else; a build that reads version 2 refuses a version-3 file by its version
//! instead of calling kind 4 damage.
//!
//! # What is detected
//!
//! A version-2 file is created at its full `capacity` (a sparse, zero-filled file) before any record goes in,
//! and records are sequence-numbered without gaps across files. Replay therefore tells damage from a torn write:
//!
//! - **torn tail** (the last append of the LAST file never completed, so it was never acknowledged): the bytes
//!   after the last valid record hold no valid record. The bytes are copied to `quarantine/` and the append
//!   position continues there. A damaged last record is indistinguishable from a torn one: see RELIABILITY.md.
//! - **corruption** (refused, nothing is truncated): a damaged record followed by a valid later record; a file
//!   shorter than its capacity (truncated); a gap or repeat in sequence numbers; a record that decodes badly
//!   despite its CRC; a closed file whose successor is missing (sealed last file); a missing file in the chain; no
//!   file at all; a log that ends before the manifest's `flushed_seq` or starts after `flushed_seq + 1`.
//!
//! Files are named `wal-{first_seq:020}.log`; a new file starts when the memtable is flushed (or a group commit
//! does not fit the current file); closed files are deleted once the manifest records a `flushed_seq` at or
//! past their last record.
//!
//! # Files
//!
//! `format.rs` the bytes of a file (header, record framing, names, constants); `record.rs` record bodies
//! (upsert and delete, encode and decode); `tail.rs` reading one file and telling a torn tail from damage;
//! `replay.rs` checking the chain of files and replaying it; `writer.rs` the appendable log (group commit,
//! rotation, roll-back); `control.rs` the control file (how far the log was acknowledged).
pub mod control;
mod format;
mod record;
mod replay;
mod tail;
mod writer;

#[cfg(test)]
mod tests;

pub use format::{list, reseal, WalFile, FILE_CAPACITY, KIND_DELETE, KIND_UPSERT, KIND_UPSERT_F16};
pub use record::{
    decode, encode_delete, encode_upsert, encode_upsert_tokens, RecordError, WalDoc, WalOp,
    WalTokens,
};
pub use replay::{replay, ControlFile, Replayed};
pub use tail::{read_file, FileEnd, Tail};
pub use writer::WalWriter;
