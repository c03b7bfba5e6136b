//! A whole chunk through the augmenter: masked-LM and vector candidates, and the same variants
//! whatever the number of threads.

use std::sync::Arc;

use tinyfast_augment::augmenter::MaskedLmCandidates;
use tinyfast_augment::knn::Kernel;
use tinyfast_augment::{Augmenter, Index, Lexicon, Settings, Source};
use tinyfast_core::rng::SplitMix64;

const WORDS: [&str; 8] = [
    "good", "great", "fine", "bad", "film", "movie", "story", "plot",
];

fn index() -> Arc<Index> {
    let mut rng = SplitMix64::new(4);
    let values: Vec<f32> = (0..WORDS.len() * 12).map(|_| rng.normal()).collect();
    let words = WORDS.iter().map(|w| w.to_string()).collect();
    Arc::new(Index::from_vectors(words, &values, 12).unwrap())
}

fn run(threads: usize, kernel: Kernel) -> Vec<Vec<String>> {
    let settings = Settings {
        n: 6,
        p: 0.5,
        k: 3,
        seed: 9,
    };
    // The masked LM writes "film" and "good" as one piece; its ids are WORDS' positions.
    let mut lexicon: Vec<String> = vec![String::new(); WORDS.len()];
    lexicon[4] = "film".into();
    lexicon[0] = "good".into();
    lexicon[1] = "great".into();
    lexicon[5] = "movie".into();
    let aug = Augmenter::new(
        settings,
        Some(Lexicon::new(lexicon, true)),
        Some(index()),
        kernel,
        threads,
    )
    .unwrap();
    let texts: Vec<String> = (0..40)
        .map(|i| {
            format!(
                "The {} film had a good story , {i} !",
                ["bad", "fine"][i % 2]
            )
        })
        .collect();
    let plan = aug.plan(texts);
    let rows: usize = plan
        .iter()
        .map(|s| {
            s.slots
                .iter()
                .filter(|x| x.source == Source::MaskedLm)
                .count()
        })
        .sum();
    assert_eq!(rows, 80); // film, good
    let ids: Vec<i64> = (0..rows).flat_map(|r| [5, 1, (r % 3) as i64, -1]).collect();
    let streams: Vec<u64> = (0..plan.len() as u64).collect();
    let mlm = MaskedLmCandidates {
        ids: &ids,
        width: 4,
    };
    aug.variants(&plan, Some(mlm), None, &streams).unwrap()
}

#[test]
fn same_variants_on_any_pool_and_kernel() {
    let one = run(1, Kernel::Portable);
    assert_eq!(one, run(2, Kernel::detect()));
    assert_eq!(one, run(3, Kernel::Portable));
    assert!(one.iter().all(|v| v.len() == 6));
    // Sentences differ only in their stream: their variants differ too.
    assert_ne!(one[0], one[2]);
    for v in one.iter().flatten() {
        assert!(v.starts_with("The ") && v.ends_with(" !"), "{v}");
        assert!(v.contains(" had a "), "stop words stay: {v}");
    }
}
