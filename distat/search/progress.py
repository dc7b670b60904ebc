"""Trial events of a running search for whoever shows them (the CLI prints one line each: Tune's own table
is too noisy for a terminal). Nothing here prints."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TrialEvent:
    """``kind``: ``start`` (with ``params``), ``epoch`` (``epoch``, ``clean_acc``), ``done`` (``clean_acc``,
    ``robust_acc``, ``diverged``, ``done`` of ``total``) or ``error`` (``path``: the trial's Tune folder)."""

    kind: str
    trial_id: str
    params: dict[str, Any] = field(default_factory=dict)
    epoch: int | None = None
    clean_acc: float = float("nan")
    robust_acc: float = float("nan")
    diverged: bool = False
    done: int = 0
    total: int = 0
    path: str | None = None


Listener = Callable[[TrialEvent], None]


def progress_callback(total: int, listener: Listener) -> Any:
    """A Tune callback turning trial events into :class:`TrialEvent` for ``listener`` (a module-level function:
    Tune's experiment snapshot pickles callbacks, and a restored search rebuilds this one with it)."""
    from ray.tune import Callback

    class TrialProgress(Callback):
        def __init__(self) -> None:
            self.done = 0

        def on_trial_start(self, iteration, trials, trial, **info):
            params = {k: v for k, v in trial.config.items() if not k.startswith("__")}
            listener(TrialEvent("start", trial.trial_id, params=params))

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if result.get("phase") != "final" and "epoch" in result:
                listener(TrialEvent("epoch", trial.trial_id, epoch=int(result["epoch"]),
                                    clean_acc=result.get("clean_acc", float("nan"))))

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.done += 1
            r = trial.last_result or {}
            listener(TrialEvent("done", trial.trial_id, clean_acc=r.get("clean_acc", float("nan")),
                                robust_acc=r.get("robust_acc", float("nan")), diverged=bool(r.get("diverged")),
                                done=self.done, total=total))

        def on_trial_error(self, iteration, trials, trial, **info):
            listener(TrialEvent("error", trial.trial_id, path=str(trial.local_path)))

        def __reduce__(self):  # rebuild, don't pickle the local class
            return (progress_callback, (total, listener))

    return TrialProgress()
