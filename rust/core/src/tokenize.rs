//! Tokenization with the bundle's `tokenizer.json` (Hugging Face `tokenizers`), and token-id
//! batches as the model takes them.
//!
//! Texts and pairs are truncated to the bundle's `max_length` tokens including the special tokens
//! (`[CLS] a [SEP]` / `[CLS] a [SEP] b [SEP]`), longest first for pairs, exactly as the Python
//! `tokenizers` package does with `truncation=True, max_length=max_length`. An empty text gives
//! `[CLS] [SEP]`. The tokenizer's own truncation and padding settings in `tokenizer.json` are
//! replaced: truncation by the bundle's, padding by none (the runtime never pads).
//!
//! Single ASCII texts take [`crate::wordpiece`]'s fast path when `tokenizer.json` is a standard
//! BERT WordPiece pipeline; it gives the same ids as `tokenizers`, which handles everything else.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::str::FromStr;
use std::sync::Once;

use rayon::prelude::*;
use tokenizers::utils::truncation::truncate_encodings;
use tokenizers::{
    PostProcessor, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy,
};

use crate::config::BundleConfig;
use crate::error::{Error, Result};
use crate::files::read_limited;
use crate::wordpiece::FastWordPiece;

/// Largest `tokenizer.json` read: a BERT WordPiece one is under 1 MiB, the largest multilingual
/// vocabularies (250k tokens with merges) about 35 MiB.
pub const MAX_TOKENIZER_BYTES: u64 = 128 << 20;

/// One input of a prediction: a text or a pair of texts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input<'a> {
    Single(&'a str),
    Pair(&'a str, &'a str),
}

impl<'a> From<&'a str> for Input<'a> {
    fn from(s: &'a str) -> Self {
        Input::Single(s)
    }
}

impl<'a> From<(&'a str, &'a str)> for Input<'a> {
    fn from((a, b): (&'a str, &'a str)) -> Self {
        Input::Pair(a, b)
    }
}

/// Token ids of a batch, row-major and padded to `width` (padding values are 0 and never read).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Encoded {
    /// `[rows, width]`.
    pub ids: Vec<u32>,
    /// `[rows, width]`: 0 for the first text and its special tokens, 1 for the second.
    pub type_ids: Vec<u32>,
    /// Tokens of each row, `1..=width`.
    pub lengths: Vec<usize>,
    /// The longest row.
    pub width: usize,
}

impl Encoded {
    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.lengths.len()
    }

    /// The ids of row `i` (without padding).
    pub fn row_ids(&self, i: usize) -> &[u32] {
        &self.ids[i * self.width..i * self.width + self.lengths[i]]
    }

    /// A borrowed view for [`crate::runtime::Runtime::predict_ids`].
    pub fn as_batch(&self) -> TokenBatch<'_> {
        TokenBatch {
            ids: &self.ids,
            type_ids: Some(&self.type_ids),
            lengths: &self.lengths,
            width: self.width,
        }
    }
}

/// Pre-tokenized input: row `i` is `ids[i * width .. i * width + lengths[i]]`, with its token
/// types at the same places of `type_ids` (all 0 when `None`). Ids must include the special tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenBatch<'a> {
    pub ids: &'a [u32],
    pub type_ids: Option<&'a [u32]>,
    pub lengths: &'a [usize],
    pub width: usize,
}

impl<'a> TokenBatch<'a> {
    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.lengths.len()
    }

    /// Row `i`'s ids and token types. Call after [`TokenBatch::validate`].
    pub fn row(&self, i: usize) -> (&'a [u32], Option<&'a [u32]>) {
        let span = i * self.width..i * self.width + self.lengths[i];
        (&self.ids[span.clone()], self.type_ids.map(|t| &t[span]))
    }

    /// Checks the buffer sizes, every length (`1..=min(width, max_length)`) and every id against
    /// the model's vocabulary (`vocab`) and token types (`type_vocab`). Errors name the row and
    /// position.
    pub fn validate(&self, vocab: usize, type_vocab: usize, max_length: usize) -> Result<()> {
        let rows = self.rows();
        let total = rows.checked_mul(self.width).ok_or_else(|| {
            Error::input(format!(
                "{rows} rows of width {} overflow the address space",
                self.width
            ))
        })?;
        if self.ids.len() != total {
            return Err(Error::input(format!(
                "ids: expected rows x width = {rows} x {} = {total} values, got {}",
                self.width,
                self.ids.len()
            )));
        }
        if let Some(t) = self.type_ids {
            if t.len() != total {
                return Err(Error::input(format!(
                    "type_ids: expected {total} values (as ids), got {}",
                    t.len()
                )));
            }
        }
        for (i, &len) in self.lengths.iter().enumerate() {
            if len == 0 {
                return Err(Error::input(format!(
                    "row {i}: length 0; every row needs at least its [CLS] token"
                )));
            }
            if len > self.width || len > max_length {
                return Err(Error::input(format!(
                    "row {i}: length {len} exceeds {} ({})",
                    self.width.min(max_length),
                    if len > self.width {
                        "the batch width"
                    } else {
                        "the bundle's max_length"
                    }
                )));
            }
            let (ids, types) = self.row(i);
            if let Some((j, &id)) = ids.iter().enumerate().find(|(_, &id)| id as usize >= vocab) {
                return Err(Error::input(format!(
                    "row {i}, position {j}: token id {id} is out of range (vocab_size {vocab})"
                )));
            }
            if let Some(types) = types {
                if let Some((j, &ty)) = types
                    .iter()
                    .enumerate()
                    .find(|(_, &ty)| ty as usize >= type_vocab)
                {
                    return Err(Error::input(format!(
                        "row {i}, position {j}: token type {ty} is out of range \
                         (type_vocab_size {type_vocab})"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// A bundle's tokenizer, set to truncate to its `max_length`.
pub struct TextTokenizer {
    inner: Tokenizer,
    max_length: usize,
    /// The ASCII fast path, when `tokenizer.json` allows it.
    fast: Option<FastWordPiece>,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("max_length", &self.max_length)
            .field("fast_path", &self.fast.is_some())
            .finish_non_exhaustive()
    }
}

impl TextTokenizer {
    /// Loads `path` (a `tokenizer.json`) for the model of `config`: every id it can produce must be
    /// below `architecture.vocab_size`, and `max_length` must leave room for the special tokens
    /// it adds to a pair.
    pub fn load(path: &Path, config: &BundleConfig) -> Result<Self> {
        let bytes = read_limited(path, MAX_TOKENIZER_BYTES, "a tokenizer.json")?;
        let json = std::str::from_utf8(&bytes).map_err(|e| {
            Error::bundle(
                path,
                format!("not a valid tokenizers file: not UTF-8 ({e})"),
            )
        })?;
        let loaded = catch_quietly(|| Tokenizer::from_str(json)).map_err(|message| {
            Error::bundle(
                path,
                format!("not a valid tokenizers file (the tokenizers library failed: {message})"),
            )
        })?;
        let mut inner =
            loaded.map_err(|e| Error::bundle(path, format!("not a valid tokenizers file: {e}")))?;
        let max_length = config.max_length;
        let added_pair = inner
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(true));
        if added_pair >= max_length {
            return Err(Error::bundle(
                path,
                format!(
                    "the tokenizer adds {added_pair} special tokens to a pair, which leaves no room \
                     in tinyfast.json's max_length {max_length}"
                ),
            ));
        }
        let vocab = config.architecture.vocab_size;
        if let Some((token, id)) = inner
            .get_vocab(true)
            .into_iter()
            .filter(|(_, id)| *id as usize >= vocab)
            .min_by_key(|(_, id)| *id)
        {
            return Err(Error::bundle(
                path,
                format!(
                    "token {token:?} has id {id}, but tinyfast.json's architecture.vocab_size is \
                     {vocab}"
                ),
            ));
        }
        // Truncation is done by `encode_one`; padding never (the runtime packs sequences).
        inner
            .with_truncation(None)
            .map_err(|e| Error::bundle(path, format!("cannot reset truncation: {e}")))?;
        inner.with_padding(None);
        let fast = FastWordPiece::from_json(json);
        Ok(TextTokenizer {
            inner,
            max_length,
            fast,
        })
    }

    /// Whether single ASCII texts take the fast path (see the module docs).
    pub fn has_fast_path(&self) -> bool {
        self.fast.is_some()
    }

    /// Tokens per text or pair, special tokens included.
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// The underlying `tokenizers` tokenizer (truncation and padding off: [`TextTokenizer`] truncates
    /// itself).
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    /// Encodes a batch (in parallel on the current rayon pool), truncating each input to
    /// `max_length` tokens.
    pub fn encode_batch(&self, inputs: &[Input]) -> Result<Encoded> {
        let encoded: Vec<(Vec<u32>, Vec<u32>)> = inputs
            .par_iter()
            .enumerate()
            .map(|(i, input)| {
                // Caught on the worker that runs it: the quiet flag is per thread.
                catch_quietly(|| self.encode_one(input)).unwrap_or_else(|message| {
                    Err(Error::compute(format!(
                        "input {i}: the tokenizers library failed: {message}"
                    )))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let width = encoded.iter().map(|e| e.0.len()).max().unwrap_or(0);
        let mut out = Encoded {
            ids: vec![0; encoded.len() * width],
            type_ids: vec![0; encoded.len() * width],
            lengths: Vec::with_capacity(encoded.len()),
            width,
        };
        for (i, (ids, types)) in encoded.iter().enumerate() {
            let n = ids.len();
            if n == 0 || n > self.max_length {
                return Err(Error::compute(format!(
                    "input {i} gave {n} tokens; expected 1..={} (does tokenizer.json add [CLS] and \
                     [SEP]?)",
                    self.max_length
                )));
            }
            out.ids[i * width..i * width + n].copy_from_slice(ids);
            out.type_ids[i * width..i * width + n].copy_from_slice(types);
            out.lengths.push(n);
        }
        Ok(out)
    }

    /// One input: each text is tokenized alone without special tokens, the pair is truncated
    /// (longest first, with the `tokenizers` library's own function, on the texts' full lengths),
    /// the truncated-off parts are dropped, and only then does the post-processor add the special
    /// tokens. This gives exactly what `tokenizers` gives with truncation set, without its
    /// pair post-processing, which combines every overflowing window of one text with every window
    /// of the other: quadratic in the texts' lengths (two 100k-character texts would need
    /// millions of encodings).
    fn encode_one(&self, input: &Input) -> Result<(Vec<u32>, Vec<u32>)> {
        let tok = &self.inner;
        let fail = |e: tokenizers::Error| Error::compute(format!("tokenizer: {e}"));
        let (first, second) = match *input {
            Input::Single(a) => (a, None),
            Input::Pair(a, b) => (a, Some(b)),
        };
        if let (Some(fast), None) = (&self.fast, second) {
            // `[CLS] a [SEP]`: two special tokens.
            if let Some(ids) = fast.encode(first, self.max_length.saturating_sub(2)) {
                let types = vec![0; ids.len()];
                return Ok((ids, types));
            }
        }
        let a = tok.encode_fast(first, false).map_err(fail)?;
        let b = match second {
            Some(text) => {
                let mut b = tok.encode_fast(text, false).map_err(fail)?;
                b.set_type_ids(vec![1; b.len()]);
                Some(b)
            }
            None => None,
        };
        let added = tok
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(b.is_some()));
        let params = TruncationParams {
            direction: TruncationDirection::Right,
            max_length: self.max_length.saturating_sub(added),
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
        };
        let (mut a, mut b) = truncate_encodings(a, b, &params).map_err(fail)?;
        drop(a.take_overflowing());
        if let Some(b) = b.as_mut() {
            drop(b.take_overflowing());
        }
        let enc = tok.post_process(a, b, true).map_err(fail)?;
        Ok((enc.get_ids().to_vec(), enc.get_type_ids().to_vec()))
    }
}

thread_local! {
    /// How many [`catch_quietly`] calls this thread is inside.
    static QUIET: Cell<u32> = const { Cell::new(0) };
}

/// Runs `f`, turning a panic into `Err` with its message (on one line), without the panic hook
/// printing it: the `tokenizers` crate panics on some malformed `tokenizer.json` files (an `expect`
/// in its deserializers), which the loader reports as an error of that file.
///
/// A process-wide hook is installed once; it stays silent for panics raised on a thread while it
/// is inside `catch_quietly` and hands every other panic to the hook that was installed before it,
/// so panics elsewhere are reported as before, and concurrent calls on other threads are
/// unaffected (a hook swapped in and out around each call would race with them).
pub(crate) fn catch_quietly<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if QUIET.with(Cell::get) == 0 {
                previous(info);
            }
        }));
    });
    QUIET.with(|q| q.set(q.get() + 1));
    let outcome = catch_unwind(AssertUnwindSafe(f));
    QUIET.with(|q| q.set(q.get() - 1));
    outcome.map_err(|payload| {
        let text = if let Some(s) = payload.downcast_ref::<&str>() {
            (*s).to_owned()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "a panic without a message".to_owned()
        };
        text.split_whitespace().collect::<Vec<_>>().join(" ")
    })
}

#[cfg(test)]
mod tests {
    use super::catch_quietly;

    #[test]
    fn catch_quietly_returns_the_message_on_one_line() {
        assert_eq!(catch_quietly(|| 7), Ok(7));
        let err = catch_quietly(|| -> u8 { panic!("bad\n  thing {}", 1) }).unwrap_err();
        assert_eq!(err, "bad thing 1");
        // Nested calls keep the outer one quiet.
        let outer = catch_quietly(|| {
            let inner = catch_quietly(|| -> u8 { panic!("inner") });
            assert!(inner.is_err());
            panic!("outer")
        });
        assert_eq!(outer, Err::<(), _>("outer".to_owned()));
    }
}
