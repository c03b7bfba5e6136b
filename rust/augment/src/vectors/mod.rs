//! Word vectors ready for the neighbour search: unit vectors padded with zeros to a multiple of
//! [`LANES`] floats, a word per row, and a lookup from word to row.
//!
//! An index is built from a text file ([`text`]) or from vectors handed over (the teacher's
//! word-piece embeddings), and saved once in a binary file ([`file`]) that later runs map into
//! memory instead of parsing text again.

pub mod file;
pub mod text;

use std::collections::HashMap;
use std::path::Path;

use memmap2::Mmap;

use crate::error::{Error, Result};
use crate::knn::{self, Kernel, LANES};

/// Where the vectors of an index live.
enum Storage {
    Owned(Vec<f32>),
    /// A saved index mapped into memory: `len` floats from byte `offset`.
    Mapped {
        map: Mmap,
        offset: usize,
        len: usize,
    },
}

/// Word vectors for the neighbour search (see the module docs).
pub struct Index {
    dim: usize,
    padded: usize,
    words: Vec<Box<str>>,
    rows: HashMap<Box<str>, u32>,
    storage: Storage,
}

/// `dim` rounded up to whole kernel lanes.
pub fn padded_dim(dim: usize) -> usize {
    dim.div_ceil(LANES) * LANES
}

/// Writes `v` scaled to length 1 into `out` (zeros past `v.len()`); a zero vector stays zero
/// and so is nobody's neighbour. The norm is summed in f64 so that it does not depend on order.
pub fn unit_into(v: &[f32], out: &mut [f32]) {
    let norm = v
        .iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt();
    let scale = if norm > 0.0 { (1.0 / norm) as f32 } else { 0.0 };
    for (o, &x) in out.iter_mut().zip(v) {
        *o = x * scale;
    }
    out[v.len()..].fill(0.0);
}

impl Index {
    /// An index of `words` and their `dim`-dimensional `values` (row-major). Words must be
    /// distinct; values finite.
    pub fn from_vectors(words: Vec<String>, values: &[f32], dim: usize) -> Result<Index> {
        if dim == 0 || values.len() != words.len() * dim {
            return Err(Error::input(format!(
                "{} words need {} values of dimension {dim}, got {}",
                words.len(),
                words.len() * dim,
                values.len()
            )));
        }
        if let Some(at) = values.iter().position(|v| !v.is_finite()) {
            return Err(Error::input(format!(
                "the vector of {:?} holds a value that is not finite",
                words[at / dim]
            )));
        }
        let padded = padded_dim(dim);
        let mut data = vec![0.0f32; words.len() * padded];
        for (src, dst) in values.chunks_exact(dim).zip(data.chunks_exact_mut(padded)) {
            unit_into(src, dst);
        }
        Index::assemble(dim, words, Storage::Owned(data))
    }

    fn assemble(dim: usize, words: Vec<String>, storage: Storage) -> Result<Index> {
        if words.len() >= u32::MAX as usize {
            return Err(Error::input(
                "too many words for one index (at most 2^32 - 2)",
            ));
        }
        let words: Vec<Box<str>> = words.into_iter().map(String::into_boxed_str).collect();
        let mut rows = HashMap::with_capacity(words.len());
        for (i, w) in words.iter().enumerate() {
            if rows.insert(w.clone(), i as u32).is_some() {
                return Err(Error::input(format!("the word {w:?} appears twice")));
            }
        }
        Ok(Index {
            dim,
            padded: padded_dim(dim),
            words,
            rows,
            storage,
        })
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Floats per stored row (`dim` rounded up to whole lanes).
    pub fn padded_dim(&self) -> usize {
        self.padded
    }

    pub fn len(&self) -> usize {
        self.words.len()
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    pub fn word(&self, row: u32) -> &str {
        &self.words[row as usize]
    }

    /// The row of `word`: as written, else lowercased (uncased vector files).
    pub fn row(&self, word: &str) -> Option<u32> {
        self.rows
            .get(word)
            .or_else(|| self.rows.get(word.to_lowercase().as_str()))
            .copied()
    }

    /// Every stored unit vector, row after row (`padded_dim` floats each).
    pub fn vectors(&self) -> &[f32] {
        match &self.storage {
            Storage::Owned(v) => v,
            Storage::Mapped { map, offset, len } => {
                // SAFETY: `file::open` checked that the mapped range is in bounds and 4-byte
                // aligned; every bit pattern is a valid f32.
                let (head, floats, _) =
                    unsafe { map[*offset..*offset + len * 4].align_to::<f32>() };
                debug_assert!(head.is_empty());
                floats
            }
        }
    }

    pub fn vector(&self, row: u32) -> &[f32] {
        let at = row as usize * self.padded;
        &self.vectors()[at..at + self.padded]
    }

    /// The `k` nearest rows of each query (`padded_dim` floats each, unit length), best first,
    /// never the row `exclude[q]`. Runs on the current rayon pool.
    pub fn nearest(
        &self,
        queries: &[f32],
        exclude: &[Option<u32>],
        k: usize,
        kernel: Kernel,
    ) -> Vec<Vec<(u32, f32)>> {
        knn::search(self.vectors(), self.padded, queries, exclude, k, kernel)
    }
}

/// How [`load`] got its index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loaded {
    /// The file given was a saved index.
    Index,
    /// The saved index beside the text file matched it and was mapped.
    Cached,
    /// The text was parsed and the index saved for next time.
    BuiltAndSaved,
    /// The text was parsed; the index could not be saved (a read-only directory, a full disk).
    Built,
}

/// The index for the vector file `path`: `path` itself when it is a saved index; else the saved
/// index `cache` when it was built from this very text (same size and modification time); else
/// the text parsed, with the index saved at `cache` for the next run.
pub fn load(path: &Path, cache: Option<&Path>) -> Result<(Index, Loaded)> {
    if file::is_index_file(path) {
        return Ok((file::open(path)?.0, Loaded::Index));
    }
    let stamp = file::SourceStamp::of(path)?;
    if let Some(cache) = cache.filter(|c| c.is_file()) {
        if let Ok((index, Some(source))) = file::open(cache) {
            if source == stamp {
                return Ok((index, Loaded::Cached));
            }
        }
    }
    let text = text::read_text(path)?;
    let index = Index::from_vectors(text.words, &text.values, text.dim)?;
    let saved = cache.is_some_and(|c| file::save(&index, c, Some(stamp)).is_ok());
    Ok((
        index,
        if saved {
            Loaded::BuiltAndSaved
        } else {
            Loaded::Built
        },
    ))
}
