"""tinyfast: small, fast BERT-family text classifiers for edge CPUs.

``import tinyfast`` needs numpy alone; training modules (``tinyfast.train``, ``tinyfast.distill``,
...) import torch when they are imported themselves.
"""

from tinyfast._native import __version__, cpu_capabilities

__all__ = ["__version__", "cpu_capabilities"]
