//! Splitting a text into tokens the way BERT's basic tokenizer does (whitespace separates tokens,
//! every punctuation or symbol character is a token of its own), and the rules on which tokens may
//! be replaced and by what.
//!
//! Tokens are byte ranges of the original text, so a variant is the original with some ranges
//! replaced: spacing, punctuation and everything around a replaced word stay verbatim.

use std::ops::Range;

use crate::stopwords::is_stop_word;

/// Longest word (in characters) considered for replacement; WordPiece itself gives up on words of
/// more than 100 characters, and nothing that long is a word.
pub const MAX_WORD_CHARS: usize = 100;

/// The tokens of `text` as byte ranges, in order: maximal runs of alphanumeric characters, and
/// every other non-whitespace character alone.
pub fn split(text: &str) -> Vec<Range<usize>> {
    let mut tokens = Vec::new();
    let mut start: Option<usize> = None;
    for (at, c) in text.char_indices() {
        if c.is_alphanumeric() {
            start.get_or_insert(at);
            continue;
        }
        if let Some(s) = start.take() {
            tokens.push(s..at);
        }
        if !c.is_whitespace() {
            tokens.push(at..at + c.len_utf8());
        }
    }
    if let Some(s) = start {
        tokens.push(s..text.len());
    }
    tokens
}

/// Whether `word` is made of letters only (and not too long): the words a variant may contain in
/// place of another, and the only ones replaced.
pub fn is_alphabetic_word(word: &str) -> bool {
    !word.is_empty()
        && word.chars().all(char::is_alphabetic)
        && word.chars().nth(MAX_WORD_CHARS).is_none()
}

/// Shortest word replaced: one- and two-letter tokens are mostly pieces of contractions as
/// tokenized text writes them ("wo n't", "it 's", "they 've", "ca n't"); replacing the "n" of
/// "n't" would undo a negation.
pub const MIN_WORD_CHARS: usize = 3;

/// Whether the token `word` gets replaced at all: alphabetic, at least [`MIN_WORD_CHARS`] long
/// and not a stop word.
pub fn is_replaceable(word: &str) -> bool {
    is_alphabetic_word(word)
        && word.chars().nth(MIN_WORD_CHARS - 1).is_some()
        && !is_stop_word(&word.to_lowercase())
}

/// Whether `candidate` may replace a word at all: an alphabetic word that is not a stop word. Only
/// content words are replaced, so only content words replace them (a masked LM's best guesses
/// for a position are often "the", "of", "and", whatever the word was).
pub fn is_candidate_word(candidate: &str) -> bool {
    is_replaceable(candidate)
}

/// Whether `candidate` may stand in for `word`: a candidate word that is not the word itself (in
/// any case), so that a replacement always changes the text.
pub fn is_candidate_for(candidate: &str, word: &str) -> bool {
    is_candidate_word(candidate) && !candidate.to_lowercase().eq(&word.to_lowercase())
}

/// `candidate` in the case of `word`: "Good" -> "Fine", "GOOD" -> "FINE", "good" -> "fine".
/// Models and vector files are often lowercase; a capitalized sentence start stays capitalized.
pub fn match_case(candidate: &str, word: &str) -> String {
    let mut letters = word.chars();
    let first_upper = letters.next().is_some_and(char::is_uppercase);
    if !first_upper {
        return candidate.to_owned();
    }
    let all_upper = word.chars().count() > 1 && word.chars().all(char::is_uppercase);
    if all_upper {
        return candidate.to_uppercase();
    }
    let mut chars = candidate.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<&str> {
        split(text).into_iter().map(|r| &text[r]).collect()
    }

    #[test]
    fn splits_like_bert_basic() {
        assert_eq!(
            words("it 's a  charming, funny film -- really!"),
            ["it", "'", "s", "a", "charming", ",", "funny", "film", "-", "-", "really", "!"]
        );
        assert_eq!(words("don't"), ["don", "'", "t"]);
        assert_eq!(words("  "), Vec::<&str>::new());
        assert_eq!(words("café x2\tñu"), ["café", "x2", "ñu"]);
    }

    #[test]
    fn replaceable_words() {
        for w in ["film", "Charming", "café", "fun"] {
            assert!(is_replaceable(w), "{w}");
        }
        for w in [
            "the", "The", "NOT", "x2", "'", "-", "", "1999", "n", "wo", "ca", "ve",
        ] {
            assert!(!is_replaceable(w), "{w}");
        }
        assert!(!is_replaceable(&"a".repeat(MAX_WORD_CHARS + 1)));
        assert!(is_replaceable(&"b".repeat(MAX_WORD_CHARS)));
    }

    #[test]
    fn candidates() {
        assert!(is_candidate_for("movie", "film"));
        assert!(!is_candidate_for("Film", "film"));
        assert!(!is_candidate_for("##ing", "film"));
        assert!(!is_candidate_for("[UNK]", "film"));
        assert!(!is_candidate_for("", "film"));
        assert!(!is_candidate_for("the", "film"));
        assert!(!is_candidate_for("Of", "film"));
    }

    #[test]
    fn case_follows_the_word() {
        assert_eq!(match_case("fine", "Good"), "Fine");
        assert_eq!(match_case("fine", "GOOD"), "FINE");
        assert_eq!(match_case("fine", "good"), "fine");
        assert_eq!(match_case("fine", "I"), "Fine");
        assert_eq!(match_case("éclat", "Good"), "Éclat");
    }
}
