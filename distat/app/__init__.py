"""The application layer: one entry per user action, what the CLI (or a notebook) calls.

Each entry takes validated settings and returns a result object; it prints nothing (messages go to a
``notify`` callable, progress to hooks) and raises :class:`distat.errors.DistatError` for anything the user
can fix. Ray, when an action needs it, is started by :func:`distat.search.cluster.ray_session` only.

=================  ========================================  ================================
user action        entry                                     module
=================  ========================================  ================================
train              :func:`train`                             :mod:`distat.app.train`
attack / static    :func:`attack`, :func:`static`            :mod:`distat.app.attack`
resources          :func:`build_resources`, :func:`show_resources`  :mod:`distat.app.resources`
search / resume    :func:`search`, :func:`resume`            :mod:`distat.app.search`
extend             :func:`extend`                            :mod:`distat.app.search`
pareto             :func:`pareto`                            :mod:`distat.app.search`
=================  ========================================  ================================
"""

from __future__ import annotations

from distat.app.attack import AttackOutcome, AttackRequest, attack, static
from distat.app.resources import AttackResources, build_resources, show_resources
from distat.app.search import FrontSummary, SearchOutcome, extend, pareto, resume, search
from distat.app.train import TrainOutcome, train

__all__ = [
    "AttackOutcome", "AttackRequest", "AttackResources", "FrontSummary", "SearchOutcome", "TrainOutcome",
    "attack", "build_resources", "extend", "pareto", "resume", "search", "show_resources", "static", "train",
]
