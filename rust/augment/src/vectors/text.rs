//! Reading word vectors from the text formats of GloVe (`word v1 ... vD` a line) and word2vec
//! (the same after a `count dim` header line), streamed line by line: memory holds the kept
//! vectors, never the text.
//!
//! Every line is checked: the same number of values on every line, each a finite number, no word
//! twice. Only words that may replace another are kept (alphabetic, not stop words; see
//! `words::is_candidate_word`), since only those are ever looked up or proposed; the others are
//! checked and dropped.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use tinyfast_core::files::open_regular;

use crate::error::{Error, Result};
use crate::words::is_candidate_word;

/// No line of a vector file is this long (a 300-dimensional GloVe line is about 3 KB); a longer
/// one means a wrong file, and reading stops before holding it.
const MAX_LINE: u64 = 1 << 20;
/// More dimensions than any word-vector file has.
pub const MAX_DIM: usize = 16384;

/// The kept words and their vectors (row-major, `dim` floats each), in file order.
pub struct TextVectors {
    pub dim: usize,
    pub words: Vec<String>,
    pub values: Vec<f32>,
}

/// Reads the vector file `path` (see the module docs).
pub fn read_text(path: &Path) -> Result<TextVectors> {
    let file = open_regular(path)?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let bad = |line: u64, message: String| Error::data(path, Some(line), message);

    let mut dim: Option<usize> = None;
    let mut declared: Option<(u64, u64)> = None; // word2vec header: (count, header line)
    let mut lines_with_vectors = 0u64;
    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut words = Vec::new();
    let mut values = Vec::new();
    let mut buf = Vec::new();
    let mut row = Vec::new();
    let mut lineno = 0u64;
    loop {
        buf.clear();
        let n = (&mut reader)
            .take(MAX_LINE + 1)
            .read_until(b'\n', &mut buf)
            .map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        lineno += 1;
        if buf.len() as u64 > MAX_LINE {
            return Err(bad(lineno, format!("line longer than {MAX_LINE} bytes")));
        }
        let text = std::str::from_utf8(&buf).map_err(|e| {
            bad(
                lineno,
                format!("not UTF-8 text (byte {})", e.valid_up_to() + 1),
            )
        })?;
        let mut fields = text.split_ascii_whitespace();
        let Some(word) = fields.next() else {
            continue; // blank lines carry nothing
        };
        row.clear();
        let rest: Vec<&str> = fields.collect();
        if dim.is_none() && declared.is_none() && rest.len() == 1 {
            if let (Ok(count), Ok(d)) = (word.parse::<u64>(), rest[0].parse::<u64>()) {
                // word2vec's header line.
                if d == 0 || d as usize > MAX_DIM {
                    return Err(bad(
                        lineno,
                        format!("dimension {d} is not in 1..={MAX_DIM}"),
                    ));
                }
                dim = Some(d as usize);
                declared = Some((count, lineno));
                continue;
            }
        }
        let expected = match dim {
            Some(d) => d,
            None => {
                if rest.is_empty() || rest.len() > MAX_DIM {
                    return Err(bad(
                        lineno,
                        format!(
                            "expected a word and 1..={MAX_DIM} numbers, found {} fields",
                            rest.len() + 1
                        ),
                    ));
                }
                *dim.insert(rest.len())
            }
        };
        if rest.len() != expected {
            return Err(bad(
                lineno,
                format!(
                    "{} values after the word {word:?}; earlier lines have {expected}",
                    rest.len()
                ),
            ));
        }
        for field in &rest {
            let v: f32 = field.parse().map_err(|_| {
                bad(
                    lineno,
                    format!("value {field:?} of the word {word:?} is not a number"),
                )
            })?;
            if !v.is_finite() {
                return Err(bad(
                    lineno,
                    format!("value {field:?} of the word {word:?} is not finite"),
                ));
            }
            row.push(v);
        }
        lines_with_vectors += 1;
        if !is_candidate_word(word) {
            continue;
        }
        if let Some(first) = seen.insert(word.to_owned(), lineno) {
            return Err(bad(
                lineno,
                format!("the word {word:?} appears twice (first at line {first})"),
            ));
        }
        words.push(word.to_owned());
        values.extend_from_slice(&row);
    }
    if let Some((count, header)) = declared {
        if count != lines_with_vectors {
            return Err(bad(
                header,
                format!(
                    "the header announces {count} vectors, the file holds {lines_with_vectors}"
                ),
            ));
        }
    }
    let Some(dim) = dim.filter(|_| lines_with_vectors > 0) else {
        return Err(Error::data(
            path,
            None,
            "no word vectors in the file (expected GloVe or word2vec text: a word and its \
             numbers on each line)"
                .into(),
        ));
    };
    if words.is_empty() {
        return Err(Error::data(
            path,
            None,
            "no alphabetic word other than stop words in the file: nothing could replace a word"
                .into(),
        ));
    }
    Ok(TextVectors { dim, words, values })
}
