//! Drawing the variants of one sentence (the paper's Algorithm 1): in each draw every replaceable
//! word with candidates is replaced, with probability `p`, by one of its candidates chosen
//! uniformly; a draw that gives the original or an earlier variant is dropped. Draws go on until
//! `n` distinct variants exist or `n * ATTEMPTS_PER_VARIANT` draws were made (a sentence with one
//! replaceable word and three candidates has only three variants).
//!
//! Each sentence draws from its own generator, seeded from (seed, stream): the variants of a
//! sentence depend on nothing else, not on the thread that draws them nor on the other sentences
//! of the batch, so output bytes never depend on the thread count or the chunking.

use std::collections::HashSet;
use std::ops::Range;

use tinyfast_core::rng::SplitMix64;

use crate::words::match_case;

/// Draws allowed per wanted variant before a sentence is given up as having no more.
pub const ATTEMPTS_PER_VARIANT: usize = 10;

/// The generator of one sentence: `stream` numbers the sentence within the run (for pairs, each
/// side has its own stream).
pub fn sentence_rng(seed: u64, stream: u64) -> SplitMix64 {
    let mut mix = SplitMix64::new(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03));
    SplitMix64::new(mix.next_u64())
}

/// A replaceable word of a sentence: its byte range and what may replace it (possibly nothing).
pub struct Slot<'a> {
    pub range: Range<usize>,
    pub candidates: &'a [Box<str>],
}

/// Up to `n` distinct variants of `text` (the original not among them), in the order drawn.
/// `slots` are in text order and do not overlap.
pub fn variants(
    text: &str,
    slots: &[Slot<'_>],
    n: usize,
    p: f32,
    rng: &mut SplitMix64,
) -> Vec<String> {
    let live: Vec<&Slot<'_>> = slots.iter().filter(|s| !s.candidates.is_empty()).collect();
    let mut out = Vec::new();
    if live.is_empty() || n == 0 {
        return out;
    }
    let mut seen: HashSet<String> = HashSet::new();
    seen.insert(text.to_owned());
    let mut picks: Vec<Option<usize>> = vec![None; live.len()];
    for _ in 0..n.saturating_mul(ATTEMPTS_PER_VARIANT) {
        draw(&live, p, rng, &mut picks);
        let variant = render(text, &live, &picks);
        if seen.insert(variant.clone()) {
            out.push(variant);
            if out.len() == n {
                break;
            }
        }
    }
    out
}

/// One draw: per slot, a candidate (always drawn, so the stream advances the same way whatever
/// the coin says) and a coin that keeps it with probability `p`.
pub fn draw(slots: &[&Slot<'_>], p: f32, rng: &mut SplitMix64, picks: &mut [Option<usize>]) {
    for (slot, pick) in slots.iter().zip(picks.iter_mut()) {
        let candidate = rng.index(slot.candidates.len());
        *pick = (rng.unit() < p).then_some(candidate);
    }
}

fn render(text: &str, slots: &[&Slot<'_>], picks: &[Option<usize>]) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    let mut at = 0;
    for (slot, pick) in slots.iter().zip(picks) {
        if let Some(c) = pick {
            out.push_str(&text[at..slot.range.start]);
            out.push_str(&match_case(&slot.candidates[*c], &text[slot.range.clone()]));
            at = slot.range.end;
        }
    }
    out.push_str(&text[at..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boxed(words: &[&str]) -> Vec<Box<str>> {
        words.iter().map(|w| Box::from(*w)).collect()
    }

    #[test]
    fn replacement_rate_is_p_and_choice_is_uniform() {
        let cands = boxed(&["a", "b", "c", "d"]);
        let slot = Slot {
            range: 0..1,
            candidates: &cands,
        };
        let slots = [&slot];
        let mut rng = sentence_rng(1, 2);
        let mut picks = [None];
        let (trials, p) = (40_000, 0.4f32);
        let mut counts = [0usize; 4];
        let mut replaced = 0;
        for _ in 0..trials {
            draw(&slots, p, &mut rng, &mut picks);
            if let Some(c) = picks[0] {
                replaced += 1;
                counts[c] += 1;
            }
        }
        let rate = replaced as f64 / trials as f64;
        assert!((rate - 0.4).abs() < 0.01, "rate {rate}");
        for c in counts {
            let share = c as f64 / replaced as f64;
            assert!((share - 0.25).abs() < 0.015, "share {share}");
        }
    }

    #[test]
    fn n_distinct_variants_without_the_original() {
        let text = "a fine film , truly moving";
        let (c1, c2, c3) = (
            boxed(&["good", "great", "nice"]),
            boxed(&["movie", "picture"]),
            boxed(&["deeply", "really"]),
        );
        let slots = [
            Slot {
                range: 2..6,
                candidates: &c1,
            },
            Slot {
                range: 7..11,
                candidates: &c2,
            },
            Slot {
                range: 14..20,
                candidates: &c3,
            },
        ];
        let v = variants(text, &slots, 20, 0.4, &mut sentence_rng(5, 0));
        assert_eq!(v.len(), 20);
        let distinct: HashSet<&String> = v.iter().collect();
        assert_eq!(distinct.len(), 20);
        assert!(!v.iter().any(|s| s == text));
        assert!(v.iter().all(|s| s.starts_with("a ") && s.contains(" , ")));
        // Only 4 * 3 * 3 - 1 = 35 variants exist: asking for more gives them all, then stops.
        let all = variants(text, &slots, 100, 0.5, &mut sentence_rng(5, 0));
        assert_eq!(all.len(), 35);
    }

    #[test]
    fn same_stream_same_variants() {
        let c = boxed(&["x", "y", "z"]);
        let slots = [Slot {
            range: 0..1,
            candidates: &c,
        }];
        let a = variants("w w", &slots, 2, 0.9, &mut sentence_rng(9, 3));
        let b = variants("w w", &slots, 2, 0.9, &mut sentence_rng(9, 3));
        assert_eq!(a, b);
        let none: Vec<Box<str>> = Vec::new();
        let empty = [Slot {
            range: 0..1,
            candidates: &none,
        }];
        assert!(variants("w", &empty, 5, 1.0, &mut sentence_rng(9, 3)).is_empty());
    }
}
