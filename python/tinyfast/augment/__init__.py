"""TinyBERT data augmentation (``tinyfast augment``) and the masked-LM head it may need
(``tinyfast fit-mlm-head``). Word splitting, stop words, word-vector neighbours and the drawing
of variants run in Rust (``tinyfast._native``); this package batches the masked LM, streams the
rows and fits the head."""

from tinyfast.augment.masked_lm import MaskedLMOptions
from tinyfast.augment.run import AugmentOptions, augment

__all__ = ["AugmentOptions", "MaskedLMOptions", "augment", "fit_mlm_head"]


def __getattr__(name: str):
    if name == "fit_mlm_head":
        from tinyfast.augment.head import fit_mlm_head

        return fit_mlm_head
    raise AttributeError(name)
