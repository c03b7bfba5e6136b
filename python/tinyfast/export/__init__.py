"""Checkpoint -> runtime bundle (docs/bundle.md): ``export(model_dir, out_dir)``. Importing it
needs numpy alone; exporting loads the checkpoint with torch."""

from tinyfast.export.writer import DTYPES, SUPPORTED_ARCHITECTURE, export, quantize_weight

__all__ = ["DTYPES", "SUPPORTED_ARCHITECTURE", "export", "quantize_weight"]
