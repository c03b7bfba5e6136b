"""``tinyfast demo``: the whole flow on a data set generated here, so it runs on any machine.

It writes a small movie-review sentiment task (with negation, so a bag of words is not enough)
and an unlabeled corpus, then runs ``tinyfast pipeline`` on them with the demo's recipe: the
packaged MiniLM teacher fine-tuned, a TinyBERT-4 student distilled, given early exits and exported
to int8, measured beside its peers, and a report.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from tinyfast.models import MINILM
from tinyfast.pipeline.recipe import Recipe, load_recipe
from tinyfast.pipeline.runner import run_pipeline

_SUBJECTS = ["the movie", "this film", "the plot", "the acting", "the script", "the ending",
             "the soundtrack", "the director's work", "the cast", "the story", "this sequel",
             "the dialogue", "the pacing", "the cinematography"]
_POSITIVE = ["wonderful", "moving", "brilliant", "charming", "gripping", "delightful", "superb",
             "funny", "beautiful", "clever", "heartfelt", "memorable", "excellent", "fresh"]
_NEGATIVE = ["dull", "boring", "clumsy", "awful", "tedious", "predictable", "shallow", "bland",
             "painful", "lifeless", "confusing", "forgettable", "terrible", "stale"]
_LINKS = ["is", "was", "felt", "seemed", "turned out to be"]
_ADVERBS = ["", "", "really ", "truly ", "quite ", "utterly ", "rather "]
_TAILS = ["", "", ".", " overall.", " from start to finish.", ", i have to say.",
          " in every way.", " for most of its running time."]


def _sentence(rng: random.Random) -> tuple[str, int]:
    positive = rng.random() < 0.5
    negated = rng.random() < 0.3
    word = rng.choice(_POSITIVE if positive != negated else _NEGATIVE)
    link = rng.choice(_LINKS)
    if negated:
        link = {"is": "is not", "was": "was not", "felt": "did not feel",
                "seemed": "did not seem", "turned out to be": "did not turn out to be"}[link]
    text = f"{rng.choice(_SUBJECTS)} {link} {rng.choice(_ADVERBS)}{word}{rng.choice(_TAILS)}"
    return " ".join(text.split()), int(positive)


def write_demo_data(folder: str | Path, train_rows: int = 800, dev_rows: int = 200,
                    corpus_rows: int = 2000, seed: int = 13) -> dict[str, Path]:
    """Writes train.tsv, dev.tsv (columns sentence, label) and corpus.txt into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    paths = {"train": folder / "train.tsv", "dev": folder / "dev.tsv",
             "corpus": folder / "corpus.txt"}
    for name, rows in (("train", train_rows), ("dev", dev_rows)):
        lines = ["sentence\tlabel"]
        lines += [f"{text}\t{label}" for text, label in (_sentence(rng) for _ in range(rows))]
        paths[name].write_text("\n".join(lines) + "\n", encoding="utf-8")
    corpus = [_sentence(rng)[0] for _ in range(corpus_rows)]
    paths["corpus"].write_text("\n".join(corpus) + "\n", encoding="utf-8")
    return paths


# The pipeline at demo scale: every stage on, sized to finish in minutes on two cores. Tuned for
# the generated task above; keys left out take the pipeline's defaults (recipe.DEFAULTS).
DEMO_RECIPE = {
    "run": {"max_length": 32},
    "finetune": {"epochs": 2.0},
    "augment": {"enabled": True, "n": 8},
    "general": {"epochs": 3.0, "lr": 2e-4, "warmup": 0.0, "batch_size": 32, "eval_every": 0},
    "task": {"intermediate_epochs": 3.0, "prediction_epochs": 2.0, "prediction_lr": 1e-4},
    "selfdistill": {"epochs": 2.0},
    "bench": {"rounds": 1, "latency_rows": 100},
}
# --quick: the smallest run that still passes through every stage (a smoke check).
QUICK_RECIPE = {
    "finetune": {"epochs": 1.0},
    "augment": {"n": 2},
    "general": {"epochs": 1.0},
    "task": {"intermediate_epochs": 1.0, "prediction_epochs": 1.0},
    "selfdistill": {"epochs": 1.0},
    "bench": {"latency_rows": 16, "calibration_rows": 32},
}


def demo_recipe(quick: bool = False, path: str | Path | None = None) -> Recipe:
    """The demo's recipe (``quick``: shrunk further), with the file ``path``'s settings over it."""
    recipe = Recipe.from_mapping(DEMO_RECIPE, "the demo recipe")
    if quick:
        recipe = Recipe.from_mapping(QUICK_RECIPE, "the quick demo recipe", base=recipe)
    return load_recipe(path, base=recipe)


def run_demo(out: str | Path, *, teacher: str = MINILM, quick: bool = False,
             recipe: str | Path | None = None, from_stage: str | None = None,
             progress: bool = True) -> dict[str, Any]:
    """Generates the demo task into ``out/data`` and runs the pipeline on it into ``out``:
    finetune -> augment -> distill general -> distill task -> selfdistill -> export ->
    evaluate -> bench -> report. A rerun skips what has not changed."""
    out = Path(out)
    sizes = dict(train_rows=160, dev_rows=64, corpus_rows=256) if quick else {}
    data = write_demo_data(out / "data", **sizes)
    return run_pipeline(teacher, data["train"], data["dev"], out, corpus=data["corpus"],
                        recipe=demo_recipe(quick, recipe), from_stage=from_stage,
                        progress=progress)
