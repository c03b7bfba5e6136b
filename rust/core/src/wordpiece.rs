//! A fast path for BERT's tokenizer on ASCII texts: the `tokenizers` pipeline `BertNormalizer`
//! (with `clean_text`) + `BertPreTokenizer` + `WordPiece` + `[CLS] a [SEP]`, computed in one pass
//! over the bytes with no per-character bookkeeping.
//!
//! `tokenizers` keeps an alignment entry per character through every normalization step and
//! allocates per word and per candidate piece; on a 128-token text that is most of a batch-1
//! prediction's time outside the encoder. For ASCII input the pipeline reduces to: drop control
//! characters (`\t`, `\n`, `\r` become spaces), lowercase if the normalizer does, split on spaces,
//! isolate each ASCII punctuation character, and split each word greedily into the longest
//! vocabulary pieces (continuations carry the `##` prefix; a word with no split, or longer than
//! `max_input_chars_per_word`, is the unknown token). Accent stripping and Chinese-character
//! padding change nothing in ASCII. A text with any non-ASCII byte, or containing an added
//! token's text (which `tokenizers` would split out first), is left to `tokenizers`
//! ([`FastWordPiece::encode`] returns `None`). Tests compare both paths on random and real texts.

use std::collections::HashMap;

use serde_json::Value;

/// The fast path for one `tokenizer.json`, when its pipeline is the one above.
#[derive(Debug)]
pub(crate) struct FastWordPiece {
    /// Vocabulary entries as a word's first piece.
    first: HashMap<Box<[u8]>, u32>,
    /// Entries starting with the continuation prefix, without it.
    cont: HashMap<Box<[u8]>, u32>,
    unk: u32,
    max_word: usize,
    lowercase: bool,
    cls: u32,
    sep: u32,
    /// Added tokens' texts, lowercased: an input containing one goes to `tokenizers`.
    added: Vec<Vec<u8>>,
}

impl FastWordPiece {
    /// The fast path for the `tokenizer.json` text `json`, or `None` when its pipeline differs
    /// from the one this module implements in any way it reads.
    pub(crate) fn from_json(json: &str) -> Option<FastWordPiece> {
        let t: Value = serde_json::from_str(json).ok()?;
        let norm = t.get("normalizer")?;
        if norm.get("type")?.as_str()? != "BertNormalizer" || !norm.get("clean_text")?.as_bool()? {
            return None;
        }
        let lowercase = norm.get("lowercase")?.as_bool()?;
        if t.get("pre_tokenizer")?.get("type")?.as_str()? != "BertPreTokenizer" {
            return None;
        }
        let model = t.get("model")?;
        if model.get("type")?.as_str()? != "WordPiece" {
            return None;
        }
        let prefix = model.get("continuing_subword_prefix")?.as_str()?.as_bytes();
        let max_word = usize::try_from(model.get("max_input_chars_per_word")?.as_u64()?).ok()?;
        let (mut first, mut cont) = (HashMap::new(), HashMap::new());
        for (token, id) in model.get("vocab")?.as_object()? {
            let id = u32::try_from(id.as_u64()?).ok()?;
            let bytes = token.as_bytes();
            first.insert(bytes.into(), id);
            if let Some(rest) = bytes.strip_prefix(prefix) {
                cont.insert(rest.into(), id);
            }
        }
        let unk = *first.get(model.get("unk_token")?.as_str()?.as_bytes())?;
        let (cls, sep) = single_template(t.get("post_processor")?)?;
        let mut added = vec![];
        for a in t.get("added_tokens")?.as_array()? {
            let content = a.get("content")?.as_str()?;
            if content.is_empty() {
                return None;
            }
            added.push(content.to_ascii_lowercase().into_bytes());
        }
        Some(FastWordPiece {
            first,
            cont,
            unk,
            max_word,
            lowercase,
            cls,
            sep,
            added,
        })
    }

    /// `[CLS] pieces [SEP]` of `text` with at most `max_pieces` pieces (the first ones), or
    /// `None` when `text` needs `tokenizers` (see the module docs).
    pub(crate) fn encode(&self, text: &str, max_pieces: usize) -> Option<Vec<u32>> {
        let bytes = text.as_bytes();
        if !text.is_ascii() || self.added.iter().any(|a| contains_ignore_case(bytes, a)) {
            return None;
        }
        let mut ids = Vec::with_capacity(max_pieces.min(bytes.len() + 1) + 2);
        ids.push(self.cls);
        let full = |ids: &Vec<u32>| ids.len() > max_pieces;
        let mut word: Vec<u8> = Vec::with_capacity(32);
        for &b in bytes {
            match b {
                b'\t' | b'\n' | b'\r' | b' ' => self.flush(&mut word, &mut ids),
                // Control characters (Cc) are dropped, not split on.
                0..=0x1f | 0x7f => continue,
                _ if b.is_ascii_punctuation() => {
                    self.flush(&mut word, &mut ids);
                    ids.push(self.piece_or_unk(&[b]));
                }
                _ => word.push(if self.lowercase {
                    b.to_ascii_lowercase()
                } else {
                    b
                }),
            }
            // Later text cannot change earlier pieces: stop once the budget is spent.
            if full(&ids) {
                break;
            }
        }
        self.flush(&mut word, &mut ids);
        ids.truncate(max_pieces + 1);
        ids.push(self.sep);
        Some(ids)
    }

    fn piece_or_unk(&self, word: &[u8]) -> u32 {
        self.first.get(word).copied().unwrap_or(self.unk)
    }

    /// Appends the pieces of `word` (if any) and clears it.
    fn flush(&self, word: &mut Vec<u8>, ids: &mut Vec<u32>) {
        if word.is_empty() {
            return;
        }
        let before = ids.len();
        if word.len() > self.max_word || !self.split(word, ids) {
            ids.truncate(before);
            ids.push(self.unk);
        }
        word.clear();
    }

    /// Greedy longest-first pieces of `word` into `ids`; false when some position has none.
    fn split(&self, word: &[u8], ids: &mut Vec<u32>) -> bool {
        let mut start = 0;
        while start < word.len() {
            let table = if start == 0 { &self.first } else { &self.cont };
            let Some((end, id)) = (start + 1..=word.len())
                .rev()
                .find_map(|end| table.get(&word[start..end]).map(|&id| (end, id)))
            else {
                return false;
            };
            ids.push(id);
            start = end;
        }
        true
    }
}

/// `[CLS]` and `[SEP]` ids of a post-processor that makes a single text `[CLS] a [SEP]` with
/// type id 0 throughout (a `TemplateProcessing` of exactly that form, or `BertProcessing`).
fn single_template(p: &Value) -> Option<(u32, u32)> {
    let id_of = |v: &Value| u32::try_from(v.as_u64()?).ok();
    match p.get("type")?.as_str()? {
        "BertProcessing" => {
            let cls = id_of(p.get("cls")?.get(1)?)?;
            let sep = id_of(p.get("sep")?.get(1)?)?;
            Some((cls, sep))
        }
        "TemplateProcessing" => {
            let single = p.get("single")?.as_array()?;
            let special = |v: &Value| -> Option<u32> {
                let s = v.get("SpecialToken")?;
                if s.get("type_id")?.as_u64()? != 0 {
                    return None;
                }
                let name = s.get("id")?.as_str()?;
                let ids = p.get("special_tokens")?.get(name)?.get("ids")?.as_array()?;
                match ids.as_slice() {
                    [id] => id_of(id),
                    _ => None,
                }
            };
            let [cls, seq, sep] = single.as_slice() else {
                return None;
            };
            let seq = seq.get("Sequence")?;
            if seq.get("id")?.as_str()? != "A" || seq.get("type_id")?.as_u64()? != 0 {
                return None;
            }
            Some((special(cls)?, special(sep)?))
        }
        _ => None,
    }
}

/// Whether `hay` contains `needle` (lowercase ASCII) regardless of ASCII case.
fn contains_ignore_case(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{bert_post_processor, SplitMix64};
    use serde_json::json;
    use std::str::FromStr;

    /// A small BERT `tokenizer.json` (the layout `transformers` writes), words of up to 6 chars,
    /// with `processor` as its post-processor.
    fn tokenizer_json(lowercase: bool, processor: Value) -> Value {
        let vocab: serde_json::Map<String, Value> = [
            "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "c", "ab", "abc", "ba", "##a",
            "##b", "##c", "##bc", "##ca", "cab", ",", ".", "!", "'", "#", "##", "###", "A", "Ab",
            "##B", "1", "##1", "12", "-", "[", "]",
        ]
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), json!(i)))
        .collect();
        let added: Vec<Value> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
            .iter()
            .enumerate()
            .map(|(i, t)| {
                json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                       "rstrip": false, "normalized": false, "special": true})
            })
            .collect();
        json!({
            "version": "1.0", "truncation": null, "padding": null, "decoder": null,
            "added_tokens": added,
            "normalizer": {"type": "BertNormalizer", "clean_text": true,
                           "handle_chinese_chars": true, "strip_accents": null,
                           "lowercase": lowercase},
            "pre_tokenizer": {"type": "BertPreTokenizer"},
            "post_processor": processor,
            "model": {"type": "WordPiece", "unk_token": "[UNK]",
                      "continuing_subword_prefix": "##", "max_input_chars_per_word": 6,
                      "vocab": vocab}
        })
    }

    fn bert_processing() -> Value {
        json!({"type": "BertProcessing", "sep": ["[SEP]", 3], "cls": ["[CLS]", 2]})
    }

    /// Random ASCII texts over characters that exercise every rule: vocabulary letters in both
    /// cases, digits, punctuation (alone and inside pieces), whitespace, control characters,
    /// added-token text.
    fn random_text(rng: &mut SplitMix64) -> String {
        const PARTS: [&str; 23] = [
            "a", "b", "c", "ab", "abc", "A", "B", "C", "1", "2", "x", " ", " ", "\t", "\n", "\r",
            "\0", "\x7f", "\x0b", ",", ".", "#", "-",
        ];
        let len = rng.below(30) as usize;
        let mut text: String = (0..len)
            .map(|_| PARTS[rng.below(PARTS.len() as u64) as usize])
            .collect();
        if rng.below(20) == 0 {
            text.insert_str(
                text.len() / 2,
                if rng.below(2) == 0 {
                    "[MASK]"
                } else {
                    "[mask]"
                },
            );
        }
        text
    }

    /// The fast path gives `tokenizers`' ids (with its own truncation to `max_pieces`), or
    /// declines a text it must leave to `tokenizers`; returns whether it answered.
    fn agrees(
        fast: &FastWordPiece,
        hf: &tokenizers::Tokenizer,
        text: &str,
        max_pieces: usize,
    ) -> bool {
        let added = fast
            .added
            .iter()
            .any(|a| contains_ignore_case(text.as_bytes(), a));
        let Some(got) = fast.encode(text, max_pieces) else {
            assert!(!text.is_ascii() || added, "declined {text:?}");
            return false;
        };
        assert!(text.is_ascii() && !added, "answered {text:?}");
        let plain = hf.encode_fast(text, false).unwrap();
        let mut want = vec![2];
        want.extend(plain.get_ids().iter().take(max_pieces));
        want.push(3);
        assert_eq!(got, want, "{text:?}, {max_pieces} pieces");
        if plain.len() <= max_pieces {
            let full = hf.encode_fast(text, true).unwrap();
            assert_eq!(got, full.get_ids(), "{text:?}");
        }
        true
    }

    #[test]
    fn equals_the_tokenizers_pipeline_on_ascii_texts() {
        for (lowercase, processor) in [
            (true, bert_post_processor()),
            (false, bert_post_processor()),
            (true, bert_processing()),
        ] {
            let json = tokenizer_json(lowercase, processor).to_string();
            let fast = FastWordPiece::from_json(&json).expect("a standard BERT pipeline");
            assert_eq!(fast.lowercase, lowercase);
            let hf = tokenizers::Tokenizer::from_str(&json).unwrap();
            let mut rng = SplitMix64::new(7);
            let mut answered = 0;
            for _ in 0..20_000 {
                let text = random_text(&mut rng);
                answered += usize::from(agrees(&fast, &hf, &text, 64));
                agrees(&fast, &hf, &text, rng.below(6) as usize);
            }
            assert!(answered > 18_000, "{answered} of 20000 took the fast path");
            for text in [
                "",
                " ",
                "abcabcabc",
                "abcabca",
                "abcab",
                "ab, ba! 'cab'.",
                "x\u{0}y",
                "a\tb\nc\rd",
                "###a #b a#",
                "12-1 1-",
                "[MASK]",
                "é",
                "ab\u{3000}ab",
            ] {
                agrees(&fast, &hf, text, 64);
                agrees(&fast, &hf, text, 1);
            }
        }
    }

    #[test]
    fn other_pipelines_have_no_fast_path() {
        let json = tokenizer_json(true, bert_post_processor());
        assert!(FastWordPiece::from_json(&json.to_string()).is_some());
        for (at, value) in [
            ("/normalizer/clean_text", json!(false)),
            ("/pre_tokenizer/type", json!("Whitespace")),
            ("/model/type", json!("BPE")),
            ("/model/unk_token", json!("<unk>")),
            ("/post_processor/single/1/Sequence/type_id", json!(1)),
            ("/post_processor/special_tokens/[CLS]/ids", json!([2, 3])),
            ("/post_processor/type", json!("RobertaProcessing")),
        ] {
            let mut changed = json.clone();
            *changed.pointer_mut(at).unwrap_or_else(|| panic!("{at}")) = value;
            assert!(
                FastWordPiece::from_json(&changed.to_string()).is_none(),
                "{at}"
            );
        }
        assert!(FastWordPiece::from_json("{").is_none());
        assert!(FastWordPiece::from_json("[]").is_none());
    }
}
