//! TinyBERT's data augmentation, everything but the masked LM: splitting sentences into words,
//! the rules on which words are replaced ([`words`], [`stopwords`]) and by whose candidates
//! ([`lexicon`]), exact nearest neighbours over word vectors ([`vectors`], [`knn`]), and the
//! seeded drawing of variants ([`sample`]). [`augmenter`] ties them into one run; the Python
//! package batches the masked LM and calls this crate through `tinyfast._native`.
//!
//! Results never depend on the number of threads: every sentence draws from its own generator,
//! and the neighbour search cuts its work the same way whatever the pool.

pub mod augmenter;
pub mod error;
pub mod knn;
pub mod lexicon;
pub mod sample;
pub mod stopwords;
pub mod vectors;
pub mod words;

pub use augmenter::{Augmenter, Sentence, Settings, Source};
pub use error::{Error, Result};
pub use lexicon::Lexicon;
pub use vectors::Index;
