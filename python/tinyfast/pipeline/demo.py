"""``tinyfast demo``: the whole flow on a data set generated here, so it runs on any machine.

It writes a small movie-review sentiment task (with negation, so a bag of words is not enough)
and an unlabeled corpus, then runs ``tinyfast pipeline`` on them with the demo's recipe: the
packaged MiniLM teacher fine-tuned, a TinyBERT-4 student distilled, given early exits and exported
to int8, measured beside its peers, and a report.
"""

from __future__ import annotations

import json
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


# The demo's student: four of the teacher's six layers at the teacher's width, copied from the
# fine-tuned teacher (init "teacher-layers", DistilBERT's start) and then task-distilled. On a
# task this small that start replaces general distillation, which needs far more text and time
# than a demo has.
DEMO_STUDENT = {"layers": 4, "hidden": 384, "ffn": 1536, "heads": 12}

# The pipeline at demo scale, sized to finish in minutes on two cores and tuned for the generated
# task above (keys left out take the pipeline's defaults, recipe.DEFAULTS):
# - augmentation makes 5x the rows, over which one epoch of each task-distillation step runs;
# - the teacher, fine-tuned on 800 rows, gives soft probabilities, and the student and its
#   branches learn them: rows become certain enough to leave early only above speed 0.5, so the
#   speeds measured reach 0.9.
DEMO_RECIPE = {
    "run": {"max_length": 32},
    "finetune": {"epochs": 2.0},
    "augment": {"enabled": True, "n": 4},
    "general": {"enabled": False},
    "task": {"init": "teacher-layers", "intermediate_epochs": 1.0, "prediction_epochs": 1.0,
             "prediction_lr": 1e-4},
    "selfdistill": {"epochs": 3.0, "lr": 1e-3},
    "evaluate": {"speeds": [0.0, 0.2, 0.4, 0.6, 0.7, 0.8, 0.9]},
    "bench": {"speeds": [0.0, 0.6], "rounds": 2, "latency_rows": 100},
}
# --quick: the smallest run that still passes through every stage (a smoke check).
QUICK_RECIPE = {
    "finetune": {"epochs": 1.0},
    "augment": {"n": 2},
    "selfdistill": {"epochs": 1.0},
    "bench": {"rounds": 1, "latency_rows": 16, "calibration_rows": 32},
}


def demo_recipe(student: str | Path, quick: bool = False,
                path: str | Path | None = None) -> Recipe:
    """The demo's recipe with ``student`` (a JSON file of DEMO_STUDENT) as the task's student
    (``quick``: shrunk further), and the file ``path``'s settings over it."""
    recipe = Recipe.from_mapping({**DEMO_RECIPE, "task": {**DEMO_RECIPE["task"],
                                                          "student": str(student)}},
                                 "the demo recipe")
    if quick:
        recipe = Recipe.from_mapping(QUICK_RECIPE, "the quick demo recipe", base=recipe)
    return load_recipe(path, base=recipe)


def run_demo(out: str | Path, *, teacher: str = MINILM, quick: bool = False,
             recipe: str | Path | None = None, from_stage: str | None = None,
             progress: bool = True) -> dict[str, Any]:
    """Generates the demo task into ``out/data`` and runs the pipeline on it into ``out``:
    finetune -> augment -> distill task -> selfdistill -> export -> evaluate -> bench ->
    report (general distillation is off in the demo's recipe, see DEMO_STUDENT). A rerun skips
    what has not changed."""
    out = Path(out)
    sizes = dict(train_rows=160, dev_rows=64, corpus_rows=256) if quick else {}
    data = write_demo_data(out / "data", **sizes)
    student = out / "data" / "student.json"
    student.write_text(json.dumps(DEMO_STUDENT) + "\n", encoding="utf-8")
    return run_pipeline(teacher, data["train"], data["dev"], out, corpus=data["corpus"],
                        recipe=demo_recipe(student, quick, recipe), from_stage=from_stage,
                        progress=progress)
