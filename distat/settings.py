"""The base of every settings model: strict and immutable.

It sits below both :mod:`distat.config` and :mod:`distat.methods` so that each method can declare its own
settings class without importing the config module (which imports the methods to assemble the union of
their settings). Unknown keys are forbidden, so a typo is an error naming the key rather than a silently
ignored setting.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """A settings model that rejects unknown keys and cannot be changed after validation."""

    model_config = ConfigDict(extra="forbid", frozen=True)
