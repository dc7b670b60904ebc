"""Nested mappings flattened to dotted keys, the one flattener of the package.

MLflow params (``tracking/mlflow.py``) and the Pareto table's ``param.*`` columns (``tracking/pareto.py``)
both show nested settings as ``outer.inner`` keys. ``pandas.json_normalize`` does not fit: it returns a
DataFrame, turning values into numpy scalars (and a missing key into NaN), while both callers need the
values exactly as given.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

__all__ = ["flatten"]


def flatten(
    mapping: Mapping[Any, Any],
    *,
    prefix: str = "",
    sep: str = ".",
    skip: Collection[Any] = (),
    keep_empty: bool = False,
) -> dict[str, Any]:
    """``mapping`` with nested mappings replaced by their leaves under ``prefix + outer + sep + inner``.

    Keys in ``skip`` are left out at every depth. An empty nested mapping has no leaves, so it vanishes,
    unless ``keep_empty`` keeps it as a value of its own. Keys keep their depth-first order.
    """
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        if key in skip:
            continue
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and (value or not keep_empty):
            out.update(flatten(value, prefix=name + sep, sep=sep, skip=skip, keep_empty=keep_empty))
        else:
            out[name] = value
    return out
