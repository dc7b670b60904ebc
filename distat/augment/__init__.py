"""Data augmentation for AMDA (Si et al., "Better Robustness by More Coverage"): adversarial data
augmentation (ADA: adversarial examples of the training set, :mod:`.ada`, and their cache, :mod:`.cache`).
AMDA's other half, hidden-state mixup, changes the model's forward pass rather than the data, so it is a
training method: :mod:`distat.methods.mixup` (its hooks: :mod:`distat.methods.mixing`).

Like :mod:`distat.methods`, nothing here knows of Ray, MLflow or TextAttack.
"""

from __future__ import annotations
