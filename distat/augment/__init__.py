"""Data augmentation for AMDA (Si et al., "Better Robustness by More Coverage"): adversarial data
augmentation (ADA: adversarial examples of the training set) and hidden-state mixup (:mod:`.mixup`).

Like :mod:`distat.methods`, nothing here knows of Ray, MLflow or TextAttack.
"""

from __future__ import annotations
