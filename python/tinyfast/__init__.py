"""tinyfast: small, fast BERT-family text classifiers for edge CPUs.

``import tinyfast`` needs numpy alone; training modules (``tinyfast.train``, ``tinyfast.distill``,
...) import torch when they are imported themselves. ``tinyfast.Runtime`` runs an exported bundle
in the int8 Rust runtime (see ``tinyfast.runtime``).
"""

from tinyfast._native import __version__, cpu_capabilities
from tinyfast.runtime import BundleError, Prediction, Runtime

__all__ = ["BundleError", "Prediction", "Runtime", "__version__", "cpu_capabilities"]
