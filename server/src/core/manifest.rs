//! A collection's directory and its two small JSON files.
//!
//! ```text
//! <data_dir>/collections/<name>/
//!   collection.json          name, dimension, IndexParams (FDE config with its seed, graph params): never changes
//!   manifest.json            which shard files are live, their tombstone sidecars, and flushed_seq
//!   codebook-<gen>.bin       the collection's token codebook (see `collection::codebook`), named by the manifest
//!   segments/seg-<id>.shard  immutable engine shards (+ graph files beside them)
//!   segments/seg-<id>.tomb-<gen>  the segment's deleted documents, generation <gen> (see `collection::tombstones`)
//!   wal/wal-<seq>.log        the write-ahead log (see `wal`)
//!   quarantine/              evidence kept aside (torn log tails); never read, never deleted by the server
//! ```
//!
//! Both JSON files are written as version 3: `{"format_version": 3, "crc32": C, "body": {...}}`, where `C` is
//! the CRC32 of the body's compact serialization, so an edited or bit-flipped file is refused instead of
//! trusted. Version 3 moved a segment's deleted documents out of the manifest into a sidecar file the manifest
//! names ([`TombstoneRef`]), so that a delete-heavy collection stops rewriting a large manifest; version 2 files
//! (the same envelope, deletions inline in `deleted`) and version 1 files (the body alone, no checksum) are
//! still read, and their inline deletions move to sidecars at the next change. Both files are replaced
//! atomically through the storage seam (`chamfer_index::storage`: temp file, fsync, rename, directory fsync on
//! a local disk), so a crash leaves either the old or the new version; the manifest is the commit point of
//! everything it names.
//!
//! The state of a collection is: the manifest's shards minus its deletions, plus every log record with
//! `seq > flushed_seq` replayed in order. A missing or damaged manifest is damage, never "an empty
//! collection": the collection is refused and nothing in its directory is touched. A shard file that a VALID
//! manifest does not name (a flush or compaction that crashed before its manifest) is deleted at start-up.
use std::io;
use std::path::{Path, PathBuf};

use chamfer_index::shard::IndexParams;
use chamfer_index::storage::{LocalDir, PutMode, Storage};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::storage_error::StorageError;

/// Format version this build writes (both files).
pub const MANIFEST_VERSION: u32 = 3;
/// The oldest version still read (the body alone, no checksum).
const OLDEST_VERSION: u32 = 1;
/// The first version with the checksummed envelope.
const ENVELOPE_VERSION: u32 = 2;

/// `collection.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CollectionConfig {
    /// Format version of the body (see [`MANIFEST_VERSION`]).
    pub format_version: u32,
    /// Collection name (its directory name).
    pub name: String,
    /// Token vector dimension.
    pub dimension: usize,
    /// Stored in its own versioned form ([`chamfer_index::shard::persisted`]), not the engine's.
    #[serde(with = "chamfer_index::shard::persisted")]
    pub params: IndexParams,
}

/// One live shard in `manifest.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SegmentEntry {
    /// Segment id (the shard file is `segments/seg-<id>.shard`).
    pub id: u64,
    /// Documents in the shard file, deleted ones included (checked against the shard on open).
    pub docs: usize,
    /// Deleted (or overwritten) document indices, ascending, inline: what versions 1 and 2 wrote. Still read
    /// (together with the sidecar); version 3 writes it empty (always serialized, so the checksum of a version
    /// 2 body, which always had it, is recomputed the same).
    pub deleted: Vec<u32>,
    /// The segment's tombstone sidecar (version 3; absent while nothing of the segment is deleted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tombstones: Option<TombstoneRef>,
}

/// A tombstone sidecar as the manifest names it: the file is `segments/seg-<id>.tomb-<generation>` (see
/// `collection::tombstones`); a new generation is written for every change of the segment's deletions.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TombstoneRef {
    /// Generation: 1 for the segment's first sidecar, one more for every later one.
    pub generation: u64,
    /// Deleted documents the file holds (checked against the file).
    pub count: u64,
    /// CRC32 of the file's body (checked against the file).
    pub crc32: u32,
}

/// The collection's token codebook, as `manifest.json` names it (the file is `codebook-<generation>.bin`, see
/// `collection::codebook`). Absent until the first flush trains it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CodebookEntry {
    /// Generation: 1 for the first codebook, one more for every re-training.
    pub generation: u64,
    /// Number of centroids (checked against the file).
    pub centroids: usize,
    /// CRC32 of the codebook bytes (checked against the file).
    pub crc32: u32,
    /// Mean squared quantization error of held-out tokens when it was trained (the drift baseline), in
    /// millionths: an integer, because the checksum covers the re-serialized body and JSON floats do not
    /// round-trip exactly through serde_json's default parser.
    pub baseline_error_e6: u64,
    /// Live documents when it was trained (re-training waits for the collection to grow).
    pub trained_at_docs: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// `manifest.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    /// Format version of the body (see [`MANIFEST_VERSION`]).
    pub format_version: u32,
    /// Every log record with a sequence number up to this one is reflected in the shards and deletions.
    pub flushed_seq: u64,
    /// The id the next flushed or compacted segment takes.
    pub next_segment_id: u64,
    /// Live shard files, with their deletions.
    pub segments: Vec<SegmentEntry>,
    /// The collection codebook every new shard is coded with (absent before the first flush, and in manifests
    /// written before it existed: absent fields are not serialized, so their checksum is unchanged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub codebook: Option<CodebookEntry>,
    /// Bytes of shard files written by flushes, over the collection's life (write amplification's base).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub flushed_bytes: u64,
    /// Bytes of shard files written by compactions, over the collection's life.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub compacted_bytes: u64,
    /// The collection's log has a control file (`wal/control`, how far it was acknowledged): a missing one is
    /// damage. Absent (false) in manifests written before control files existed; such a collection gets one
    /// when it is next opened.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub log_control: bool,
}

/// Paths inside a collection directory.
#[derive(Clone, Debug)]
pub struct Layout {
    /// The collection directory.
    pub dir: PathBuf,
}

impl Layout {
    /// `collection.json`.
    pub fn config(&self) -> PathBuf {
        self.dir.join("collection.json")
    }
    /// `manifest.json`.
    pub fn manifest(&self) -> PathBuf {
        self.dir.join("manifest.json")
    }
    /// `segments/`: the shard files.
    pub fn segments(&self) -> PathBuf {
        self.dir.join("segments")
    }
    /// `wal/`: the write-ahead log files.
    pub fn wal(&self) -> PathBuf {
        self.dir.join("wal")
    }
    /// `quarantine/`: evidence kept aside (torn log tails).
    pub fn quarantine(&self) -> PathBuf {
        self.dir.join("quarantine")
    }
    /// The shard file of segment `id`.
    pub fn segment(&self, id: u64) -> PathBuf {
        self.segments().join(format!("seg-{id:010}.shard"))
    }
    /// The tombstone sidecar of segment `id`, generation `generation`, as a name in [`Layout::store`].
    pub fn tombstones(id: u64, generation: u64) -> String {
        format!("segments/seg-{id:010}.tomb-{generation:08}")
    }
    /// The (segment id, generation) of a tombstone sidecar's file name (`seg-<id>.tomb-<generation>`).
    pub fn tombstones_of(name: &str) -> Option<(u64, u64)> {
        let (id, generation) = name.strip_prefix("seg-")?.split_once(".tomb-")?;
        Some((id.parse().ok()?, generation.parse().ok()?))
    }
    /// The collection directory as a store (the storage seam); names are relative to it.
    pub fn store(&self) -> LocalDir {
        LocalDir::new(&self.dir)
    }
    /// The file of collection codebook generation `generation`.
    pub fn codebook(&self, generation: u64) -> PathBuf {
        self.dir.join(format!("codebook-{generation:08}.bin"))
    }
    /// The generation of a codebook file name (`codebook-<generation>.bin`), if it is one.
    pub fn codebook_generation_of(name: &str) -> Option<u64> {
        name.strip_prefix("codebook-")?
            .strip_suffix(".bin")?
            .parse()
            .ok()
    }
    /// The segment id of a file in `segments/` (`seg-<id>.<anything>`), if it is one of ours.
    pub fn segment_id_of(name: &str) -> Option<u64> {
        name.strip_prefix("seg-")?.split('.').next()?.parse().ok()
    }
}

/// The version-2 file: a body and the CRC32 of its compact JSON.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope<T> {
    format_version: u32,
    crc32: u32,
    body: T,
}

#[derive(Deserialize)]
struct VersionProbe {
    format_version: u32,
}

/// Something stored as a checked JSON file.
pub trait Versioned: Serialize + DeserializeOwned {
    /// The version recorded inside the body.
    fn version(&self) -> u32;
}

impl Versioned for CollectionConfig {
    fn version(&self) -> u32 {
        self.format_version
    }
}

impl Versioned for Manifest {
    fn version(&self) -> u32 {
        self.format_version
    }
}

fn body_crc<T: Serialize>(path: &Path, body: &T) -> Result<u32, StorageError> {
    let bytes =
        serde_json::to_vec(body).map_err(|e| StorageError::damaged(path, None, e.to_string()))?;
    Ok(crc32fast::hash(&bytes))
}

/// Reads a checked JSON file (version 2 or 3, or an unchecked version 1). A missing file is an error saying so.
pub fn read_checked<T: Versioned>(path: &Path) -> Result<T, StorageError> {
    let (store, name) = LocalDir::for_file(path)?;
    read_checked_from(&store, &name)
}

/// [`read_checked`] of the file `name` of `store`.
pub fn read_checked_from<T: Versioned>(store: &dyn Storage, name: &str) -> Result<T, StorageError> {
    let path = store.locate(name);
    let bytes = match store.read(name) {
        Ok(b) => b,
        Err(e) if e.source.kind() == io::ErrorKind::NotFound => {
            return Err(StorageError::damaged(
                path,
                None,
                "the file is missing (it always exists in a collection; refusing to open, nothing was deleted)",
            ))
        }
        Err(e) => return Err(e.into()),
    };
    parse_checked(&path, &bytes)
}

/// Parses the bytes of a checked JSON file (see [`read_checked`]).
pub fn parse_checked<T: Versioned>(path: &Path, bytes: &[u8]) -> Result<T, StorageError> {
    let corrupt = |e: serde_json::Error| StorageError::damaged(path, None, e.to_string());
    let probe: VersionProbe = serde_json::from_slice(bytes).map_err(corrupt)?;
    let value: T = match probe.format_version {
        OLDEST_VERSION => serde_json::from_slice(bytes).map_err(corrupt)?,
        ENVELOPE_VERSION..=MANIFEST_VERSION => {
            let env: Envelope<T> = serde_json::from_slice(bytes).map_err(corrupt)?;
            let got = body_crc(path, &env.body)?;
            if got != env.crc32 {
                return Err(StorageError::damaged(
                    path,
                    None,
                    format!(
                        "checksum mismatch (stored {:#010x}, computed {got:#010x}): the file was damaged or edited",
                        env.crc32
                    ),
                ));
            }
            env.body
        }
        found => {
            return Err(StorageError::Version {
                path: path.to_path_buf(),
                found,
                supported: MANIFEST_VERSION,
            })
        }
    };
    if value.version() != probe.format_version {
        return Err(StorageError::damaged(
            path,
            None,
            format!(
                "the body says format version {}, the file {}",
                value.version(),
                probe.format_version
            ),
        ));
    }
    Ok(value)
}

/// Writes a checked JSON file atomically and durably, in the version its body records (this build writes
/// [`MANIFEST_VERSION`]; the envelope needs version 2 or later).
pub fn write_checked<T: Versioned>(path: &Path, body: &T) -> Result<(), StorageError> {
    let (store, name) = LocalDir::for_file(path)?;
    write_checked_to(&store, &name, body)
}

/// [`write_checked`] as the file `name` of `store` (replacing it atomically: [`PutMode::Overwrite`]).
pub fn write_checked_to<T: Versioned>(
    store: &dyn Storage,
    name: &str,
    body: &T,
) -> Result<(), StorageError> {
    let path = store.locate(name);
    let env = Envelope {
        format_version: body.version().max(ENVELOPE_VERSION),
        crc32: body_crc(&path, body)?,
        body,
    };
    let bytes = serde_json::to_vec_pretty(&env)
        .map_err(|e| StorageError::damaged(&path, None, e.to_string()))?;
    Ok(store.put(name, &bytes, PutMode::Overwrite)?)
}

/// Recomputes the CRC of a version-2 file whose body parses as `T` (for fuzzing: mutations then reach the
/// checks behind the checksum). None when the bytes are not such a file.
#[doc(hidden)]
pub fn reseal<T: Versioned>(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut env: Envelope<T> = serde_json::from_slice(bytes).ok()?;
    env.crc32 = body_crc(Path::new(""), &env.body).ok()?;
    serde_json::to_vec(&env).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn manifest() -> Manifest {
        Manifest {
            format_version: MANIFEST_VERSION,
            flushed_seq: 41,
            next_segment_id: 3,
            segments: vec![SegmentEntry {
                id: 2,
                docs: 10,
                deleted: vec![1, 7],
                tombstones: None,
            }],
            ..Manifest::default()
        }
    }

    /// A manifest written before the codebook and the byte counters existed: its checksum covers a body without
    /// them, and it still reads (absent fields are not serialized, so the recomputed checksum is the same).
    #[test]
    fn reads_manifests_written_before_the_codebook() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.json");
        let body = r#"{"format_version":2,"flushed_seq":41,"next_segment_id":3,"segments":[{"id":2,"docs":10,"deleted":[1,7]}]}"#;
        let crc = crc32fast::hash(body.as_bytes());
        fs::write(
            &path,
            format!(r#"{{"format_version":2,"crc32":{crc},"body":{body}}}"#),
        )
        .unwrap();
        let v2 = Manifest {
            format_version: 2,
            ..manifest()
        };
        assert_eq!(read_checked::<Manifest>(&path).unwrap(), v2);
        // And one with them round-trips.
        let with = Manifest {
            codebook: Some(CodebookEntry {
                generation: 3,
                centroids: 1024,
                crc32: 77,
                baseline_error_e6: 250_000,
                trained_at_docs: 9,
            }),
            flushed_bytes: 5,
            compacted_bytes: 6,
            ..manifest()
        };
        write_checked(&path, &with).unwrap();
        assert_eq!(read_checked::<Manifest>(&path).unwrap(), with);
    }

    #[test]
    fn round_trips_and_refuses_edits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.json");
        write_checked(&path, &manifest()).unwrap();
        assert_eq!(read_checked::<Manifest>(&path).unwrap(), manifest());
        // Raising flushed_seq by hand (the issue's silent loss) is now refused.
        let text = fs::read_to_string(&path).unwrap();
        fs::write(&path, text.replace("41", "4100")).unwrap();
        let e = read_checked::<Manifest>(&path).unwrap_err();
        assert!(e.to_string().contains("checksum mismatch"), "{e}");
        // A missing file is damage, not an empty manifest.
        fs::remove_file(&path).unwrap();
        let e = read_checked::<Manifest>(&path).unwrap_err();
        assert!(matches!(e, StorageError::Damaged { .. }), "{e}");
    }

    /// Through the storage seam in memory (no root, no tmpfs): a full disk fails the manifest write with `Full`
    /// naming the file and leaves the old manifest as it was; damage in the stored bytes is refused; a version-3
    /// manifest naming a tombstone sidecar round-trips.
    #[test]
    fn a_full_disk_or_damage_in_memory_leaves_the_old_manifest() {
        use chamfer_index::storage::{Fault, MemoryStorage};
        let store = MemoryStorage::new();
        let old = manifest();
        write_checked_to(&store, "manifest.json", &old).unwrap();
        let new = Manifest {
            flushed_seq: 99,
            segments: vec![SegmentEntry {
                id: 2,
                docs: 10,
                deleted: vec![],
                tombstones: Some(TombstoneRef {
                    generation: 4,
                    count: 2,
                    crc32: 9,
                }),
            }],
            ..manifest()
        };
        store.inject(Fault::Capacity(store.used_bytes()));
        let e = write_checked_to(&store, "manifest.json", &new).unwrap_err();
        assert!(
            e.is_full() && e.to_string().contains("manifest.json"),
            "{e}"
        );
        assert_eq!(
            read_checked_from::<Manifest>(&store, "manifest.json").unwrap(),
            old
        );
        store.heal();
        write_checked_to(&store, "manifest.json", &new).unwrap();
        assert_eq!(
            read_checked_from::<Manifest>(&store, "manifest.json").unwrap(),
            new
        );
        let len = store.read("manifest.json").unwrap().len();
        for at in (0..len).step_by(7) {
            write_checked_to(&store, "manifest.json", &new).unwrap();
            store.damage("manifest.json", at, 0x01);
            let got = read_checked_from::<Manifest>(&store, "manifest.json");
            // A flipped bit may leave equivalent JSON (whitespace, a key's case is not); never a different body.
            if let Ok(m) = got {
                assert_eq!(m, new, "byte {at}");
            }
        }
        store.delete("manifest.json").unwrap();
        let e = read_checked_from::<Manifest>(&store, "manifest.json").unwrap_err();
        assert!(matches!(e, StorageError::Damaged { .. }), "{e}");
    }

    #[test]
    fn reads_version_1_and_refuses_unknown_versions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.json");
        let v1 = Manifest {
            format_version: 1,
            ..manifest()
        };
        fs::write(&path, serde_json::to_vec(&v1).unwrap()).unwrap();
        assert_eq!(read_checked::<Manifest>(&path).unwrap(), v1);
        fs::write(&path, br#"{"format_version": 9}"#).unwrap();
        assert!(matches!(
            read_checked::<Manifest>(&path).unwrap_err(),
            StorageError::Version { found: 9, .. }
        ));
        for bad in [
            &b""[..],
            b"{",
            b"[]",
            b"{\"format_version\": 2, \"crc32\": 0, \"body\": 5}",
        ] {
            fs::write(&path, bad).unwrap();
            assert!(matches!(
                read_checked::<Manifest>(&path).unwrap_err(),
                StorageError::Damaged { .. }
            ));
        }
    }
}

/// The bytes of `collection.json` are a file format: a known collection's file must equal a golden string, the
/// one this release writes (parameters through `chamfer_index::shard::persisted`). Version 3 differs from what
/// earlier releases wrote only in the version number (and so the checksum): the body's bytes are unchanged.
#[cfg(test)]
mod golden_tests {
    use super::*;
    use std::fs;

    const GOLDEN: &str = r#"{
  "format_version": 3,
  "crc32": 657114867,
  "body": {
    "format_version": 3,
    "name": "legacy",
    "dimension": 4,
    "params": {
      "fde": {
        "dimension": 4,
        "num_repetitions": 2,
        "num_simhash_projections": 2,
        "seed": 1,
        "projection_type": "ams_sketch",
        "projection_dimension": 4,
        "fill_empty_partitions": false,
        "final_projection_dimension": null
      },
      "hnsw": {
        "prefix_repetitions": 2,
        "m": 16,
        "ef_construction": 100,
        "storage": "f16",
        "min_docs": 250000
      },
      "codebook_size": 4096
    }
  }
}"#;

    fn known() -> CollectionConfig {
        let mut params = IndexParams::new(4);
        params.fde.num_repetitions = 2;
        params.fde.num_simhash_projections = 2;
        params.fde.projection_dimension = 4;
        params.hnsw.prefix_repetitions = 2;
        // What the v1 release wrote (the default cap is now 2^16; stored parameters never change).
        params.codebook_size = 4096;
        CollectionConfig {
            format_version: MANIFEST_VERSION,
            name: "legacy".into(),
            dimension: 4,
            params,
        }
    }

    #[test]
    fn collection_json_is_a_golden_string() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("collection.json");
        write_checked(&path, &known()).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), GOLDEN);
        assert_eq!(read_checked::<CollectionConfig>(&path).unwrap(), known());
    }

    /// The checked-in v1 fixture (written by the first release) reads as the same collection.
    #[test]
    fn the_v1_fixture_reads_as_the_known_collection() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/v1/collections/legacy/collection.json");
        let v1 = read_checked::<CollectionConfig>(&path).unwrap();
        assert_eq!(v1.format_version, 1);
        assert_eq!(
            CollectionConfig {
                format_version: MANIFEST_VERSION,
                ..v1
            },
            known()
        );
    }
}
