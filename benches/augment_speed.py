"""TinyBERT augmentation speed on SST-2 train: the official compute pattern against tinyfast, same
masked LM and same word vectors, JSON out.

- ``official``: a faithful reimplementation of the reference code's compute pattern, per
  replaceable word: the sentence re-tokenized, a batch-1 forward of
  ``[CLS] masked [SEP] sentence [SEP]`` with autograd on and logits at every position, a full
  sort over the vocabulary; for words of several pieces a full sort of the word vectors'
  similarities. Slow: it runs on ``--official-rows`` sentences spread evenly over the ones
  tinyfast runs on, so that both rates come from sentences of the same mix of lengths.
- ``word``: ``tinyfast augment`` masking one word per input (the same inputs as above, batched).
- ``multi``: ``tinyfast augment`` masking several far-apart words per input.
Each tinyfast mode runs on each masked-LM engine of ``--engines``: ``int8`` (the default on the
CPU: tinyfast's int8 runtime), ``float32`` and ``bfloat16`` (the checkpoint in torch). On the
first ``--agreement-rows`` sentences the bench measures how far candidates move (share of equal
best candidates, mean overlap of the K best): each engine against float32, and multi-masking and
the masked context against TinyBERT's one word per input.
The Rust neighbour search is timed alone on 1 and 2 threads, in alternating pairs; its scaling
is the median of the pairs' ratios.

Rates on a shared machine drift by a third within minutes, so the ratios that matter are taken
side by side: the official pattern and tinyfast's int8 modes (the CPU default) run in
``--rounds`` alternating rounds, each int8 mode's ratio is its rate over the official rate of the
same round, and the median of the rounds' ratios is reported with every round's figures. The torch
engines run once and are compared with the official pattern's median rate.

The word vectors are a GloVe-format text file the bench writes: every whole-word token of the
masked LM's vocabulary and every alphabetic word of the corpus and the task, each the mean of
its word pieces' input embeddings.

    python benches/augment_speed.py --mlm RUN/model --out benches/results/augment_speed.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import sys
import time
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _paths import recorded_path  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def write_vectors(tokenizer, embeddings: np.ndarray, texts: list[str], path: Path) -> int:
    from tinyfast.augment.vocab import surface_words

    words = {w for w in surface_words(tokenizer) if w.isalpha()}
    for text in texts:
        words.update(w for w in text.lower().split() if w.isalpha())
    words = sorted(words)
    ids = tokenizer(words, add_special_tokens=False)["input_ids"]
    with open(path, "w", encoding="utf-8") as f:
        for word, pieces in zip(words, ids, strict=True):
            v = embeddings[pieces].mean(axis=0)
            f.write(word + " " + " ".join(f"{x:.5f}" for x in v) + "\n")
    return len(words)


class Official:
    """The reference implementation's compute pattern (see the module docs); candidates and
    sampling follow it too, so its output is a real augmentation."""

    def __init__(self, model, tokenizer, words: list[str], emb: np.ndarray, k: int, n: int,
                 p: float) -> None:
        from tinyfast import _native

        self.model, self.tokenizer, self.k, self.n, self.p = model, tokenizer, k, n, p
        self.emb_norm = emb / np.linalg.norm(emb, axis=1, keepdims=True)
        self.vocab = {w: i for i, w in enumerate(words)}
        self.words = words
        # Word splitting and the stop-word rule as tinyfast has them (BERT's basic tokenizer and
        # NLTK's list, as the reference): without a masked LM or vectors, every replaceable
        # word is "missing" from the vectors.
        self.rules = _native.Augmenter(0, 0.0, 1, 0, threads=1)

    def replaceable(self, sentence: str) -> tuple[list[str], set[str]]:
        plan = self.rules.plan([sentence])
        return plan.tokens()[0], set(self.rules.missing_words(plan))

    def masked_lm(self, sentence: str, word_pieces: list[str], mask_at: int) -> list[str]:
        tok = self.tokenizer
        text = ["[CLS]"] + tok.tokenize(sentence)
        n_first = len(text)
        pieces = word_pieces + ["[SEP]"] + text[1:] + ["[SEP]"]
        pieces = pieces[:512]
        ids = tok.convert_tokens_to_ids(pieces)
        segments = [0] * (n_first + 1) + [1] * (len(pieces) - n_first - 1)
        logits = self.model(torch.tensor([ids]), token_type_ids=torch.tensor([segments])).logits
        best = torch.argsort(logits[0, mask_at], descending=True)[: self.k].tolist()
        return [t for t in tok.convert_ids_to_tokens(best) if not t.startswith("##")]

    def word_distance(self, word: str) -> list[str]:
        if word not in self.vocab:
            return []
        i = self.vocab[word]
        dist = self.emb_norm @ self.emb_norm[i]
        dist[i] = -np.inf
        return [self.words[j] for j in np.argsort(-dist)[: self.k]]

    def word_augment(self, sentence: str, index: int, word: str) -> list[str]:
        pieces = ["[CLS]"] + self.tokenizer.tokenize(sentence) + ["[SEP]"]
        word_no, ids = -1, []
        for i in range(1, len(pieces) - 1):
            if not pieces[i].startswith("##"):
                word_no += 1
                if word_no < index:
                    ids = []
                elif word_no == index:
                    ids = [i]
                else:
                    break
            else:
                ids.append(i)
        if len(ids) == 1:
            pieces[ids[0]] = "[MASK]"
            found = self.masked_lm(sentence, pieces, ids[0])
        else:
            found = self.word_distance(word)
        return found or [word]

    def augment(self, sentence: str, rng: random.Random) -> list[str]:
        tokens, replaceable = self.replaceable(sentence)
        candidates = {i: self.word_augment(sentence, i, w) for i, w in enumerate(tokens)
                      if w in replaceable}
        out = [sentence]
        for _ in range(self.n):
            new = list(tokens)
            for i, words in candidates.items():
                choice = rng.choice(words)
                if rng.random() < self.p:
                    new[i] = choice
            if " ".join(new) not in out:
                out.append(" ".join(new))
        return out


def spread(items: list[str], count: int) -> list[str]:
    """``count`` items spread evenly over ``items``, first included."""
    return [items[i * len(items) // count] for i in range(min(count, len(items)))]


def mix(sentences: list[str]) -> dict[str, Any]:
    return {"count": len(sentences),
            "mean_words": round(sum(len(s.split()) for s in sentences) / len(sentences), 2)}


def time_official(args, model, tokenizer, words: list[str], emb: np.ndarray,
                  sentences: list[str]) -> dict[str, Any]:
    official = Official(model, tokenizer, words, emb, args.k, args.n, args.p)
    rng = random.Random(0)
    model.train(False)
    started = time.perf_counter()
    rows = 0
    for sentence in sentences:
        official.augment(sentence, rng)
        rows += 1
    seconds = time.perf_counter() - started
    return {"sentences": rows, "seconds": round(seconds, 2),
            "sentences_per_s": round(rows / seconds, 3)}


def engine_options(engine: str, threads: int, **kwargs: Any) -> Any:
    """MaskedLMOptions running the masked LM on ``engine`` (int8, or a torch dtype)."""
    from tinyfast.augment import MaskedLMOptions

    if engine == "int8":
        return MaskedLMOptions(backend="int8", threads=threads, device="cpu", **kwargs)
    return MaskedLMOptions(backend="torch", dtype=engine, device="cpu", **kwargs)


def time_tinyfast(args, data: Path, work: Path, mode: str, engine: str, gap: int
                  ) -> dict[str, Any]:
    from tinyfast.augment import AugmentOptions, augment

    out = work / f"aug-{mode}-{gap}-{engine}.tsv"
    load = os.getloadavg()[0]
    summary = augment(data, out, options=AugmentOptions(n=args.n, p=args.p, k=args.k,
                                                        seed=1, threads=args.threads),
                      mlm=args.mlm, vectors=work / "vectors.txt", overwrite=True,
                      mlm_options=engine_options(engine, args.threads, mode=mode,
                                                 context="pair", min_gap=gap),
                      progress=False)
    # The rate leaves out loading the masked LM and vectors (and exporting the int8 model), as
    # the official pattern's timing leaves out loading its model; both are reported.
    work_seconds = summary["seconds"] - summary["setup_seconds"]
    return {"sentences": summary["rows"], "seconds": summary["seconds"],
            "setup_seconds": summary["setup_seconds"],
            "sentences_per_s": round(summary["rows"] / work_seconds, 3),
            "sentences_per_s_with_setup": round(summary["rows"] / summary["seconds"], 3),
            "masked_lm_words": summary["masked_lm_words"],
            "vector_words": summary["vector_words"],
            "masked_lm_forwards": summary["masked_lm_forwards"], "rows_out": summary["rows_out"],
            "masked_lm_backend": summary["masked_lm_backend"],
            "min_gap": gap if mode == "multi" else None, "load_average_before": round(load, 2)}


def agreement(ids: np.ndarray, reference: np.ndarray, k: int) -> dict[str, float]:
    """Share of masked words with the same best candidate, and mean share of the K best in
    common."""
    overlap = [len(set(a) & set(b)) / k for a, b in zip(ids, reference, strict=True)]
    return {"same_best_candidate": round(float(np.mean(ids[:, 0] == reference[:, 0])), 4),
            "mean_overlap_of_k_best": round(float(np.mean(overlap)), 4)}


def candidate_agreement(args, model, tokenizer, sentences: list[str], engines: list[str],
                        min_gaps: list[int]) -> dict[str, Any]:
    """How candidates move with the engine (each against float32 torch, one word per input) and
    with the masking (multi-mask and the masked context against one word per input in the pair
    context, on the int8 engine)."""
    from tinyfast import _native
    from tinyfast.augment.masked_lm import MaskedLM
    from tinyfast.augment.vocab import lowercases, surface_words

    rules = _native.Augmenter(args.n, args.p, args.k, 1, threads=args.threads,
                              mlm_words=surface_words(tokenizer), lowercase=lowercases(tokenizer))
    plan = rules.plan(sentences)
    sentence, token = plan.masked_words()

    def candidates(engine: str, **masking: Any) -> np.ndarray:
        lm = MaskedLM(model, tokenizer, rules.candidate_mask(),
                      engine_options(engine, args.threads, **masking))
        return lm.candidates(plan.tokens(), sentence, token, args.k)

    word = {"mode": "word", "context": "pair"}
    reference = candidates("float32", **word)
    out: dict[str, Any] = {"sentences": len(sentences), "masked_words": int(len(sentence)),
                           "engine_against_float32": {}, "masking_against_one_word_per_input":
                           {"engine": "int8"}}
    per_word = {}
    for engine in engines:
        if engine != "float32":
            per_word[engine] = candidates(engine, **word)
            out["engine_against_float32"][engine] = agreement(per_word[engine], reference,
                                                              args.k)
    int8_word = per_word.get("int8")
    if int8_word is None:
        int8_word = candidates("int8", **word)
    masking = out["masking_against_one_word_per_input"]
    for gap in min_gaps:
        found = candidates("int8", mode="multi", context="pair", min_gap=gap)
        masking[f"multi_gap{gap}"] = agreement(found, int8_word, args.k)
    masking["word_masked_context"] = agreement(candidates("int8", mode="word", context="masked"),
                                               int8_word, args.k)
    return out


def time_neighbours(work: Path, emb: np.ndarray, queries: int, k: int, rounds: int
                    ) -> dict[str, Any]:
    """The Rust search alone, in a fresh process: this one's torch thread pool, busy until a
    moment ago, would compete with the search's threads."""
    import multiprocessing

    rng = np.random.default_rng(0)
    probe = emb[rng.choice(len(emb), size=queries, replace=False)]
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_search_times, (str(work / "vectors.txt"), probe, k, rounds))


def _search_times(vectors_file: str, probe: np.ndarray, k: int, rounds: int) -> dict[str, Any]:
    from tinyfast.augment.word_vectors import load_vectors

    vectors = load_vectors(vectors_file)
    queries = len(probe)
    result: dict[str, Any] = {"index_words": len(vectors), "dim": vectors.dim,
                              "queries": queries, "k": k}
    result["load_average_before"] = round(os.getloadavg()[0], 2)
    # 1 and 2 threads take turns, and each pair's ratio is taken within the pair: the shared
    # machine's speed drifts by a third within minutes, which the best time of each alone does not
    # cancel (two undisturbed cores come round less often than one).
    best = {1: float("inf"), 2: float("inf")}
    cpu = dict(best)
    ratios = []
    for _ in range(rounds):
        wall = {}
        for threads in (1, 2):
            t, c = time.perf_counter(), time.process_time()
            vectors.nearest(probe, k, threads=threads)
            wall[threads] = time.perf_counter() - t
            best[threads] = min(best[threads], wall[threads])
            cpu[threads] = min(cpu[threads], time.process_time() - c)
        ratios.append(wall[1] / wall[2])
    result["rounds"] = rounds
    for threads in (1, 2):
        result[f"seconds_{threads}_thread"] = round(best[threads], 4)
        # CPU seconds of all threads: equal on 1 and 2 threads means the split adds no work, and
        # cpu / wall is how many cores the run actually got.
        result[f"cpu_seconds_{threads}_thread"] = round(cpu[threads], 4)
        result[f"queries_per_s_{threads}_thread"] = round(queries / best[threads], 1)
    result["scaling_1_to_2_threads"] = round(median(ratios), 3)
    result["scaling_rounds"] = [round(x, 3) for x in ratios]
    result["scaling_of_best_times"] = round(best[1] / best[2], 3)
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mlm", required=True, help="masked-LM checkpoint (fit-mlm-head's OUT/model)")
    ap.add_argument("--data", default=str(SHARED / "sst2" / "train.tsv"))
    ap.add_argument("--corpus", default=str(SHARED / "corpus" / "movie_reviews.txt"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--work-dir", default="bench-augment")
    ap.add_argument("--official-rows", type=int, default=100)
    ap.add_argument("--rows", type=int, default=1000, help="sentences for the tinyfast modes")
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--p", type=float, default=0.4)
    ap.add_argument("--k", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2, help="Rust and torch threads")
    ap.add_argument("--engines", default="int8,bfloat16,float32",
                    help="masked-LM engines: int8 (the int8 runtime) and torch dtypes")
    ap.add_argument("--agreement-rows", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=5,
                    help="alternating rounds of the official pattern and the int8 modes")
    ap.add_argument("--min-gaps", default="3,1",
                    help="multi mode's --min-gap values (3 is the default of tinyfast augment)")
    ap.add_argument("--neighbour-queries", type=int, default=4000)
    ap.add_argument("--neighbour-rounds", type=int, default=15,
                    help="alternating 1- and 2-thread pairs of the neighbour search")
    ap.add_argument("--neighbours-only", action="store_true",
                    help="time the neighbour search alone (no masked LM timing)")
    args = ap.parse_args()
    for flag in ("rounds", "neighbour_rounds", "official_rows", "rows"):
        if getattr(args, flag) < 1:
            ap.error(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    if args.official_rows > args.rows:
        ap.error(f"--official-rows ({args.official_rows}) cannot exceed --rows ({args.rows})")
    torch.set_num_threads(args.threads)

    from tinyfast.augment.masked_lm import load_masked_lm
    from tinyfast.augment.word_vectors import input_embeddings

    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    model, tokenizer = load_masked_lm(args.mlm)
    lines = Path(args.data).read_text(encoding="utf-8").splitlines()
    header, rows = lines[0], lines[1:]
    sentences = [r.split("\t")[header.split("\t").index("sentence")] for r in rows]
    corpus = Path(args.corpus).read_text(encoding="utf-8").splitlines()
    n_words = write_vectors(tokenizer, input_embeddings(model), corpus + sentences,
                            work / "vectors.txt")
    words, vectors = [], []
    with open(work / "vectors.txt", encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip().split(" ")
            words.append(parts[0])
            vectors.append(np.array(parts[1:], dtype=np.float32))
    emb = np.stack(vectors)
    sample = work / "sample.tsv"
    sample.write_text("\n".join([header, *rows[: args.rows]]) + "\n", encoding="utf-8")
    # The official pattern's sentences: every step-th of tinyfast's, the same mix of lengths (its
    # time grows with the replaceable words of a sentence).
    official_sentences = spread(sentences[: args.rows], args.official_rows)

    result: dict[str, Any] = {
        "bench": "augment_speed", "date": datetime.date.today().isoformat(),
        "machine": {"cpu": platform.processor() or platform.machine(),
                    "threads": args.threads, "torch": torch.__version__},
        "data": recorded_path(args.data), "masked_lm": recorded_path(args.mlm, work, "<WORK>"),
        "vectors": {"words": n_words, "dim": int(emb.shape[1]),
                    "source": "mean word-piece input embeddings of the masked LM"},
        "settings": {"n": args.n, "p": args.p, "k": args.k, "context": "pair"},
        "sentences": {"tinyfast": mix(sentences[: args.rows]),
                      "official": mix(official_sentences)},
        "note": (f"tinyfast timed on the first {args.rows} sentences of the train file, the "
                 f"official pattern on {args.official_rows} of them spread evenly (sentences: "
                 "their number and mean words); the official pattern and the int8 "
                 f"modes alternate in {args.rounds} rounds, and speedup_over_official holds each "
                 "int8 mode's ratio per round (to the official rate of the same round) and their "
                 "median. The machine's 2 cores were shared "
                 "with other jobs (load_average_before: the 1-minute load when a measurement "
                 "started; above 2, every thread waits for a core), so absolute rates vary "
                 "between runs and the 1-to-2-thread scaling is only meaningful on idle cores"),
    }
    print("neighbour search ...", file=sys.stderr)
    result["neighbour_search"] = time_neighbours(work, emb, args.neighbour_queries,
                                                 args.k + 4, args.neighbour_rounds)
    if args.neighbours_only:
        result = {k: result[k] for k in ("bench", "date", "machine", "vectors")} | {
            "neighbour_search": result["neighbour_search"]}
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        print(json.dumps(result, indent=1))
        return 0
    runs = [("word", 1)] + [("multi", int(g)) for g in args.min_gaps.split(",")]
    engines = args.engines.split(",")

    def name_of(mode: str, gap: int, engine: str) -> str:
        return (f"{mode}_{engine}" if mode == "word" or gap == 3
                else f"{mode}_gap{gap}_{engine}")

    # The official pattern and the int8 modes take turns; a round's ratios share its conditions.
    official_rounds: list[dict[str, Any]] = []
    int8_rounds: dict[str, list[dict[str, Any]]] = {}
    for r in range(args.rounds if "int8" in engines else 0):
        print(f"round {r + 1}: official ...", file=sys.stderr)
        load_before = round(os.getloadavg()[0], 2)
        official = time_official(args, model, tokenizer, words, emb, official_sentences)
        official_rounds.append(official | {"load_average_before": load_before})
        for mode, gap in runs:
            name = name_of(mode, gap, "int8")
            print(f"round {r + 1}: tinyfast {name} ...", file=sys.stderr)
            int8_rounds.setdefault(name, []).append(
                time_tinyfast(args, sample, work, mode, "int8", gap))
    modes: dict[str, Any] = {}
    speedup: dict[str, Any] = {}
    for name, rounds in int8_rounds.items():
        ratios = [m["sentences_per_s"] / o["sentences_per_s"]
                  for m, o in zip(rounds, official_rounds, strict=True)]
        # What every round shares at the top; each round's times in "rounds".
        same = {k: v for k, v in rounds[0].items()
                if k not in ("seconds", "setup_seconds", "load_average_before")}
        modes[name] = same | {
            "sentences_per_s": round(median([m["sentences_per_s"] for m in rounds]), 3),
            "sentences_per_s_with_setup": round(median([m["sentences_per_s_with_setup"]
                                                        for m in rounds]), 3),
            "rounds": rounds}
        speedup[name] = {"median": round(median(ratios), 1),
                         "rounds": [round(x, 1) for x in ratios]}
    for engine in (e for e in engines if e != "int8"):
        for mode, gap in runs:
            name = name_of(mode, gap, engine)
            print(f"tinyfast {name} ...", file=sys.stderr)
            modes[name] = time_tinyfast(args, sample, work, mode, engine, gap)
    print("candidate agreement ...", file=sys.stderr)
    result["candidate_agreement"] = candidate_agreement(
        args, model, tokenizer, sentences[: args.agreement_rows], engines,
        [int(g) for g in args.min_gaps.split(",")])
    if not official_rounds:
        print("official ...", file=sys.stderr)
        load_before = round(os.getloadavg()[0], 2)
        official_rounds.append(time_official(args, model, tokenizer, words, emb,
                                             official_sentences)
                               | {"load_average_before": load_before})
    official_rate = round(median([o["sentences_per_s"] for o in official_rounds]), 3)
    result["official"] = {"sentences": official_rounds[0]["sentences"],
                          "sentences_per_s": official_rate, "rounds": official_rounds}
    result["tinyfast"] = modes
    for name, m in modes.items():
        speedup.setdefault(name, {"median": round(m["sentences_per_s"] / official_rate, 1),
                                  "note": "one run, against the official median rate"})
    result["speedup_over_official"] = speedup
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
