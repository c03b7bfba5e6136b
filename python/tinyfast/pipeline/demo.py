"""``tinyfast demo``: the whole flow on a data set generated here, so it runs on any machine.

It writes a small movie-review sentiment task (with negation, so a bag of words is not enough)
and an unlabeled corpus, fine-tunes the packaged MiniLM teacher on it, distils a TinyBERT-4 student
(general, then task distillation) and reports both dev accuracies.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

from tinyfast import train
from tinyfast.distill import IntermediateOptions, StageSettings, distill_general, distill_task
from tinyfast.finetune import finetune
from tinyfast.models import MINILM

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


def run_demo(out: str | Path, *, teacher: str = MINILM, student: str = "tinybert4",
             quick: bool = False, progress: bool = True) -> dict[str, Any]:
    """Runs generate -> finetune -> distill general -> distill task into ``out``.
    ``quick`` shrinks every step (for tests and smoke checks)."""
    out = Path(out)
    started = time.perf_counter()
    sizes = dict(train_rows=160, dev_rows=64, corpus_rows=256) if quick else {}
    data = write_demo_data(out / "data", **sizes)
    common = dict(batch_size=32, progress=progress, save_every=0, log_every=5)
    teacher_run = finetune(
        teacher, data["train"], data["dev"], out / "teacher", max_length=32,
        config=train.TrainConfig(epochs=1 if quick else 2, lr=5e-5, **common))
    general = distill_general(
        teacher, data["corpus"], out / "general", student=student, max_length=32,
        config=train.TrainConfig(epochs=1 if quick else 3, lr=2e-4, warmup=0.0, **common))
    task = distill_task(
        str(out / "teacher" / "model"), data["train"], data["dev"], out / "student",
        student=student, init="checkpoint", init_checkpoint=str(out / "general" / "model"),
        intermediate=StageSettings(epochs=1 if quick else 5, lr=1e-4, warmup=0.0),
        prediction=StageSettings(epochs=1 if quick else 3, lr=1e-4, warmup=0.1),
        options=IntermediateOptions(), config=train.TrainConfig(**common))
    summary = {
        "teacher_dev_accuracy": teacher_run["best"]["accuracy"],
        "student_dev_accuracy": task["best"]["accuracy"],
        "teacher_parameters": task["teacher_parameters"],
        "student_parameters": task["student_parameters"],
        "general_heldout_loss": (general["best"] or {}).get("heldout_loss"),
        "seconds": time.perf_counter() - started,
        "student_model": str(out / "student" / "model"),
    }
    (out / "demo.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return summary
