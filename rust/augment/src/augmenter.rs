//! One augmentation run: the settings, the masked LM's lexicon (if any), the word vectors (if
//! any) and a thread pool. The caller plans a chunk of sentences ([`Augmenter::plan`]), runs the
//! masked LM on the slots planned for it (the only step outside this crate), and hands its
//! candidate ids to [`Augmenter::variants`], which finds the vector candidates and draws.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::knn::Kernel;
use crate::lexicon::Lexicon;
use crate::sample::{sentence_rng, variants, Slot};
use crate::vectors::{unit_into, Index};
use crate::words::{is_candidate_for, is_replaceable, split};

/// Most variants per sentence and most candidates per word a run accepts.
pub const MAX_VARIANTS: usize = 10_000;
pub const MAX_CANDIDATES: usize = 1_000;
/// Neighbour lists kept between chunks (words repeat across a corpus); past this the memory is
/// cleared and refilled, which changes speed, never results.
const CACHE_WORDS: usize = 200_000;
/// Extra neighbours fetched so that K remain after dropping the word's other spellings (and, in
/// indexes built from handed-over vectors, stop words).
const SPARE_NEIGHBOURS: usize = 8;

#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Variants wanted per sentence.
    pub n: usize,
    /// Probability that a word with candidates is replaced in a variant.
    pub p: f32,
    /// Candidates per word.
    pub k: usize,
    pub seed: u64,
}

impl Settings {
    pub fn check(&self) -> Result<()> {
        if !(self.p.is_finite() && (0.0..=1.0).contains(&self.p)) {
            return Err(Error::input(format!("p must be in [0, 1], got {}", self.p)));
        }
        if self.n > MAX_VARIANTS {
            return Err(Error::input(format!(
                "n must be at most {MAX_VARIANTS}, got {}",
                self.n
            )));
        }
        if self.k == 0 || self.k > MAX_CANDIDATES {
            return Err(Error::input(format!(
                "k must be in 1..={MAX_CANDIDATES}, got {}",
                self.k
            )));
        }
        Ok(())
    }
}

/// Where a replaceable word takes its candidates from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The masked LM (a word the model writes as one piece).
    MaskedLm,
    /// The nearest words by vectors (any other word, or every word without a masked LM).
    Vectors,
}

#[derive(Clone, Debug)]
pub struct PlannedSlot {
    /// Index into the sentence's tokens.
    pub token: usize,
    pub source: Source,
}

/// A sentence split into tokens, with its replaceable words.
#[derive(Clone, Debug)]
pub struct Sentence {
    pub text: String,
    pub tokens: Vec<Range<usize>>,
    pub slots: Vec<PlannedSlot>,
}

impl Sentence {
    pub fn word(&self, token: usize) -> &str {
        &self.text[self.tokens[token].clone()]
    }
}

/// Splits `text` and decides, per replaceable word, where its candidates come from.
pub fn plan_sentence(text: String, lexicon: Option<&Lexicon>) -> Sentence {
    let tokens = split(&text);
    let slots = tokens
        .iter()
        .enumerate()
        .filter(|(_, r)| is_replaceable(&text[(*r).clone()]))
        .map(|(token, r)| {
            let single = lexicon.is_some_and(|l| l.is_single_piece(&text[r.clone()]));
            PlannedSlot {
                token,
                source: if single {
                    Source::MaskedLm
                } else {
                    Source::Vectors
                },
            }
        })
        .collect();
    Sentence {
        text,
        tokens,
        slots,
    }
}

/// Candidate ids of the masked LM, one row per [`Source::MaskedLm`] slot of the chunk (sentence
/// after sentence, slots in text order), best first; ids < 0 mean none.
pub struct MaskedLmCandidates<'a> {
    pub ids: &'a [i64],
    pub width: usize,
}

/// Vectors for words the index does not hold (see [`Augmenter::missing_words`]), `dim` each.
pub struct ExtraVectors<'a> {
    pub words: &'a [String],
    pub values: &'a [f32],
}

type Candidates = Arc<[Box<str>]>;

pub struct Augmenter {
    settings: Settings,
    lexicon: Option<Lexicon>,
    index: Option<Arc<Index>>,
    kernel: Kernel,
    pool: rayon::ThreadPool,
    cache: Mutex<HashMap<Box<str>, Candidates>>,
}

impl Augmenter {
    /// `threads`: worker threads (0 = one per core).
    pub fn new(
        settings: Settings,
        lexicon: Option<Lexicon>,
        index: Option<Arc<Index>>,
        kernel: Kernel,
        threads: usize,
    ) -> Result<Augmenter> {
        settings.check()?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("tinyfast-augment-{i}"))
            .build()
            .map_err(|e| Error::input(format!("cannot start {threads} threads: {e}")))?;
        Ok(Augmenter {
            settings,
            lexicon,
            index,
            kernel,
            pool,
            cache: Mutex::new(HashMap::new()),
        })
    }

    pub fn settings(&self) -> Settings {
        self.settings
    }

    pub fn lexicon(&self) -> Option<&Lexicon> {
        self.lexicon.as_ref()
    }

    pub fn index(&self) -> Option<&Index> {
        self.index.as_deref()
    }

    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// Runs `f` on this run's thread pool.
    pub fn install<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.pool.install(f)
    }

    pub fn plan(&self, texts: Vec<String>) -> Vec<Sentence> {
        let lexicon = self.lexicon.as_ref();
        self.pool.install(|| {
            texts
                .into_par_iter()
                .map(|t| plan_sentence(t, lexicon))
                .collect()
        })
    }

    /// The distinct words of vector slots that the index does not hold, in first-seen order.
    pub fn missing_words(&self, sentences: &[Sentence]) -> Vec<String> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for s in sentences {
            for slot in s.slots.iter().filter(|x| x.source == Source::Vectors) {
                let word = s.word(slot.token);
                let known = self.index.as_ref().is_some_and(|i| i.row(word).is_some());
                if !known && seen.insert(word) {
                    out.push(word.to_owned());
                }
            }
        }
        out
    }

    /// The variants of every sentence (the original not included): masked-LM candidates from
    /// `mlm`, vector candidates searched here, then `settings.n` draws from each sentence's own
    /// generator, seeded by `streams[i]`.
    pub fn variants(
        &self,
        sentences: &[Sentence],
        mlm: Option<MaskedLmCandidates<'_>>,
        extra: Option<ExtraVectors<'_>>,
        streams: &[u64],
    ) -> Result<Vec<Vec<String>>> {
        if streams.len() != sentences.len() {
            return Err(Error::input(format!(
                "{} sentences but {} stream numbers",
                sentences.len(),
                streams.len()
            )));
        }
        let mlm_rows: usize = sentences
            .iter()
            .map(|s| {
                s.slots
                    .iter()
                    .filter(|x| x.source == Source::MaskedLm)
                    .count()
            })
            .sum();
        let mlm_lists = self.masked_lm_lists(sentences, mlm, mlm_rows)?;
        let vector_lists = self.vector_lists(sentences, extra)?;
        let Settings { n, p, seed, .. } = self.settings;
        let empty: Candidates = Arc::from(Vec::new());
        let mut mlm_at = 0usize;
        let mut per_sentence = Vec::with_capacity(sentences.len());
        for s in sentences {
            let mut lists = Vec::with_capacity(s.slots.len());
            for slot in &s.slots {
                lists.push(match slot.source {
                    Source::MaskedLm => {
                        mlm_at += 1;
                        mlm_lists[mlm_at - 1].clone()
                    }
                    Source::Vectors => vector_lists
                        .get(s.word(slot.token))
                        .cloned()
                        .unwrap_or_else(|| empty.clone()),
                });
            }
            per_sentence.push(lists);
        }
        Ok(self.pool.install(|| {
            sentences
                .par_iter()
                .zip(per_sentence.par_iter())
                .zip(streams.par_iter())
                .map(|((s, lists), &stream)| {
                    let slots: Vec<Slot<'_>> = s
                        .slots
                        .iter()
                        .zip(lists)
                        .map(|(slot, c)| Slot {
                            range: s.tokens[slot.token].clone(),
                            candidates: c,
                        })
                        .collect();
                    variants(&s.text, &slots, n, p, &mut sentence_rng(seed, stream))
                })
                .collect()
        }))
    }

    fn masked_lm_lists(
        &self,
        sentences: &[Sentence],
        mlm: Option<MaskedLmCandidates<'_>>,
        rows: usize,
    ) -> Result<Vec<Candidates>> {
        if rows == 0 {
            return Ok(Vec::new());
        }
        let (Some(lexicon), Some(mlm)) = (self.lexicon.as_ref(), mlm) else {
            return Err(Error::input(format!(
                "{rows} words wait for masked-LM candidates, but none were given"
            )));
        };
        if mlm.width == 0 || mlm.ids.len() != rows * mlm.width {
            return Err(Error::input(format!(
                "masked-LM candidates: expected {rows} rows, got {} ids in rows of {}",
                mlm.ids.len(),
                mlm.width
            )));
        }
        let k = self.settings.k;
        let mut out = Vec::with_capacity(rows);
        let mut row = 0usize;
        for s in sentences {
            for slot in s.slots.iter().filter(|x| x.source == Source::MaskedLm) {
                let word = s.word(slot.token);
                let ids = &mlm.ids[row * mlm.width..(row + 1) * mlm.width];
                let list: Vec<Box<str>> = ids
                    .iter()
                    .filter_map(|&id| lexicon.candidate(id))
                    .filter(|c| is_candidate_for(c, word))
                    .take(k)
                    .map(Box::from)
                    .collect();
                out.push(Arc::from(list));
                row += 1;
            }
        }
        Ok(out)
    }

    /// Neighbour lists of every distinct vector word of the chunk, from the cache or one search.
    fn vector_lists(
        &self,
        sentences: &[Sentence],
        extra: Option<ExtraVectors<'_>>,
    ) -> Result<HashMap<Box<str>, Candidates>> {
        let mut out: HashMap<Box<str>, Candidates> = HashMap::new();
        let Some(index) = self.index.as_ref() else {
            return Ok(out);
        };
        let padded = index.padded_dim();
        let mut extra_rows: HashMap<&str, &[f32]> = HashMap::new();
        if let Some(e) = &extra {
            if e.values.len() != e.words.len() * index.dim() {
                return Err(Error::input(format!(
                    "{} extra words need {} values of dimension {}, got {}",
                    e.words.len(),
                    e.words.len() * index.dim(),
                    index.dim(),
                    e.values.len()
                )));
            }
            if let Some(at) = e.values.iter().position(|v| !v.is_finite()) {
                return Err(Error::input(format!(
                    "the vector given for {:?} holds a value that is not finite",
                    e.words[at / index.dim()]
                )));
            }
            for (w, v) in e.words.iter().zip(e.values.chunks_exact(index.dim())) {
                extra_rows.insert(w.as_str(), v);
            }
        }
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let mut queries: Vec<f32> = Vec::new();
        let mut exclude = Vec::new();
        let mut asked: Vec<Box<str>> = Vec::new();
        for s in sentences {
            for slot in s.slots.iter().filter(|x| x.source == Source::Vectors) {
                let word = s.word(slot.token);
                if out.contains_key(word) {
                    continue;
                }
                if let Some(hit) = cache.get(word) {
                    out.insert(word.into(), hit.clone());
                    continue;
                }
                let row = index.row(word);
                let start = queries.len();
                match (row, extra_rows.get(word)) {
                    (Some(r), _) => queries.extend_from_slice(index.vector(r)),
                    (None, Some(v)) => {
                        queries.resize(start + padded, 0.0);
                        unit_into(v, &mut queries[start..]);
                    }
                    (None, None) => {
                        // Neither in the vectors nor given one: it keeps its place.
                        out.insert(word.into(), Arc::from(Vec::new()));
                        continue;
                    }
                }
                exclude.push(row);
                out.insert(word.into(), Arc::from(Vec::new())); // filled below
                asked.push(word.into());
            }
        }
        drop(cache);
        if asked.is_empty() {
            return Ok(out);
        }
        let k = self.settings.k;
        let found = self
            .pool
            .install(|| index.nearest(&queries, &exclude, k + SPARE_NEIGHBOURS, self.kernel));
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() + asked.len() > CACHE_WORDS {
            cache.clear();
        }
        for (word, hits) in asked.into_iter().zip(found) {
            let list: Vec<Box<str>> = hits
                .iter()
                .map(|&(r, _)| index.word(r))
                .filter(|c| is_candidate_for(c, &word))
                .take(k)
                .map(Box::from)
                .collect();
            let list: Candidates = Arc::from(list);
            cache.insert(word.clone(), list.clone());
            out.insert(word, list);
        }
        Ok(out)
    }
}
