//! The saved index: one binary file, written once and mapped into memory by later runs.
//!
//! Layout (little-endian):
//! ```text
//! 0   8 bytes  magic "TFWVIX01"
//! 8   u32      dim            12  u32  padded dim
//! 16  u64      count          24  u64  byte offset of the vectors (a multiple of 64)
//! 32  u64      byte offset of the words     40  u64  bytes of the words
//! 48  u64      source size    56  u64  source modification time (ns since the epoch)
//! vectors: count x padded f32 (unit length, zero padding)
//! words:   count x (u32 byte length, UTF-8 bytes)
//! ```
//! The source stamp records which text file the index was built from, so that an edited vector
//! file is noticed and its index rebuilt. The file is written under a temporary name and renamed,
//! so a killed run never leaves a half-written index under the real name.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use memmap2::Mmap;
use tinyfast_core::files::open_regular;

use super::{padded_dim, Index, Storage};
use crate::error::{Error, Result};

const MAGIC: &[u8; 8] = b"TFWVIX01";
const HEADER: usize = 64;

/// Size and modification time of a file: what identifies the text an index was built from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceStamp {
    pub size: u64,
    pub mtime_ns: u64,
}

impl SourceStamp {
    pub fn of(path: &Path) -> Result<SourceStamp> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as u64);
        Ok(SourceStamp {
            size: meta.len(),
            mtime_ns,
        })
    }
}

/// Whether `path` starts like a saved index (and so is not a text file).
pub fn is_index_file(path: &Path) -> bool {
    let mut magic = [0u8; 8];
    open_regular(path)
        .ok()
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic).ok())
        .is_some()
        && &magic == MAGIC
}

fn write_all(path: &Path, index: &Index, source: Option<SourceStamp>) -> Result<()> {
    let io = |e| Error::io(path, e);
    let file = File::create(path).map_err(io)?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let count = index.len() as u64;
    let vectors_at = HEADER as u64;
    let words_at = vectors_at + count * index.padded as u64 * 4;
    let words_len: u64 = index.words.iter().map(|w| 4 + w.len() as u64).sum();
    let stamp = source.unwrap_or(SourceStamp {
        size: 0,
        mtime_ns: 0,
    });
    let mut header = Vec::with_capacity(HEADER);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&(index.dim as u32).to_le_bytes());
    header.extend_from_slice(&(index.padded as u32).to_le_bytes());
    for v in [
        count,
        vectors_at,
        words_at,
        words_len,
        stamp.size,
        stamp.mtime_ns,
    ] {
        header.extend_from_slice(&v.to_le_bytes());
    }
    header.resize(HEADER, 0);
    w.write_all(&header).map_err(io)?;
    for v in index.vectors() {
        w.write_all(&v.to_le_bytes()).map_err(io)?;
    }
    for word in &index.words {
        w.write_all(&(word.len() as u32).to_le_bytes())
            .map_err(io)?;
        w.write_all(word.as_bytes()).map_err(io)?;
    }
    let file = w.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)
}

/// Saves `index` at `path` (through a temporary file and a rename), stamped with `source`.
pub fn save(index: &Index, path: &Path, source: Option<SourceStamp>) -> Result<()> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp: PathBuf = path.with_file_name(tmp_name);
    let written = write_all(&tmp, index, source)
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e)));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp); // our own temporary file, never the user's
    }
    written
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Maps the saved index at `path`; returns it with the stamp of the text it was built from.
pub fn open(path: &Path) -> Result<(Index, Option<SourceStamp>)> {
    if cfg!(target_endian = "big") {
        return Err(Error::input(
            "saved indexes are little-endian; this CPU is not",
        ));
    }
    let bad = |message: &str| Error::data(path, None, format!("not a valid index: {message}"));
    let file = open_regular(path)?;
    // SAFETY: the map is read-only. A file changed by another process while mapped would change
    // the vectors under us (wrong neighbours, never unsafety: any bytes are valid f32).
    let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    if map.len() < HEADER || &map[..8] != MAGIC {
        return Err(bad("it does not start with the index header"));
    }
    let dim = u32_at(&map, 8) as usize;
    let padded = u32_at(&map, 12) as usize;
    let count = u64_at(&map, 16);
    let vectors_at = u64_at(&map, 24);
    let words_at = u64_at(&map, 32);
    let words_len = u64_at(&map, 40);
    if dim == 0 || padded != padded_dim(dim) || !vectors_at.is_multiple_of(64) {
        return Err(bad("inconsistent dimensions"));
    }
    let vectors_len = count.checked_mul(padded as u64 * 4);
    let sizes_agree = vectors_len
        .and_then(|v| v.checked_add(vectors_at))
        .is_some_and(|end| end == words_at)
        && words_at.checked_add(words_len) == Some(map.len() as u64);
    if !sizes_agree {
        return Err(bad("its size does not match its header (truncated?)"));
    }
    let mut words = Vec::with_capacity(count as usize);
    let blob = &map[words_at as usize..];
    let mut at = 0usize;
    for _ in 0..count {
        if at + 4 > blob.len() {
            return Err(bad("the word list ends early"));
        }
        let len = u32_at(blob, at) as usize;
        at += 4;
        let bytes = blob
            .get(at..at + len)
            .ok_or_else(|| bad("the word list ends early"))?;
        let word = std::str::from_utf8(bytes).map_err(|_| bad("a word is not UTF-8"))?;
        words.push(word.to_owned());
        at += len;
    }
    if at != blob.len() {
        return Err(bad("bytes after the word list"));
    }
    let stamp = SourceStamp {
        size: u64_at(&map, 48),
        mtime_ns: u64_at(&map, 56),
    };
    let source = (stamp.size != 0 || stamp.mtime_ns != 0).then_some(stamp);
    let storage = Storage::Mapped {
        map,
        offset: vectors_at as usize,
        len: (count as usize) * padded,
    };
    let index = Index::assemble(dim, words, storage).map_err(|e| bad(&e.to_string()))?;
    Ok((index, source))
}
