//! The masked LM's vocabulary seen as words: which words the model writes as one piece (those
//! get candidates from the model, as in TinyBERT), and which of its output ids are words that
//! may replace another (the only ones it may propose).

use std::collections::HashSet;

use crate::words::{is_alphabetic_word, is_candidate_word};

pub struct Lexicon {
    /// id -> the word the piece is when it starts a word ("" for continuation pieces and
    /// special tokens).
    words: Vec<Box<str>>,
    single: HashSet<Box<str>>,
    lowercase: bool,
}

impl Lexicon {
    /// `words[id]` is the whole word piece `id` stands for, or "" if it stands for none (a
    /// `##` continuation, a special token); `lowercase`: the tokenizer lowercases its input.
    pub fn new(words: Vec<String>, lowercase: bool) -> Lexicon {
        let words: Vec<Box<str>> = words.into_iter().map(String::into_boxed_str).collect();
        let single = words
            .iter()
            .filter(|w| is_alphabetic_word(w))
            .cloned()
            .collect();
        Lexicon {
            words,
            single,
            lowercase,
        }
    }

    pub fn len(&self) -> usize {
        self.words.len()
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// Whether the tokenizer keeps `word` as a single piece: for WordPiece, exactly when the
    /// (normalized) word is a vocabulary entry, since the longest-match-first split takes the
    /// whole word when it can.
    pub fn is_single_piece(&self, word: &str) -> bool {
        if self.lowercase {
            self.single.contains(word.to_lowercase().as_str())
        } else {
            self.single.contains(word)
        }
    }

    /// The word output `id` proposes, if it is one that may replace a word.
    pub fn candidate(&self, id: i64) -> Option<&str> {
        let word = self.words.get(usize::try_from(id).ok()?)?;
        is_candidate_word(word).then_some(&**word)
    }

    /// Per output id, whether the model may propose it (masks the logits before the top-k).
    pub fn candidate_mask(&self) -> Vec<bool> {
        self.words.iter().map(|w| is_candidate_word(w)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::Lexicon;

    #[test]
    fn single_pieces_and_candidates() {
        let words = ["", "", "film", "", "good", "ok", "the"]
            .map(String::from)
            .to_vec();
        let lex = Lexicon::new(words, true);
        assert!(lex.is_single_piece("film") && lex.is_single_piece("Film"));
        assert!(!lex.is_single_piece("filmmaker"));
        assert_eq!(lex.candidate(4), Some("good"));
        assert_eq!(lex.candidate(1), None);
        assert_eq!(lex.candidate(-1), None);
        assert_eq!(lex.candidate(99), None);
        // "ok" is too short to replace or propose, "the" a stop word.
        assert_eq!(lex.candidate(5), None);
        assert_eq!(lex.candidate(6), None);
        assert!(lex.is_single_piece("the"));
        assert_eq!(
            lex.candidate_mask(),
            [false, false, true, false, true, false, false]
        );
        let cased = Lexicon::new(["film".to_owned()].to_vec(), false);
        assert!(!cased.is_single_piece("Film"));
    }
}
