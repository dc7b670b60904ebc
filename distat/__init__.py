"""distat: distributed search for adversarial-training settings of transformer text classifiers."""

from __future__ import annotations

__version__ = "0.1.0"
