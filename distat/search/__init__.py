"""The search: a YAML search space run as Ray Tune trials (each training on Ray Train workers, then attacked)
under Optuna's multi-objective sampler, tracked in MLflow, resumable after its driver died.

One module per concept: ``space`` (the search YAML → :class:`~distat.search.space.SearchConfig` and Optuna's
define-by-run space), ``searcher`` (OptunaSearch with the clean-accuracy floor), ``driver`` (start, resume,
finish), ``trial`` (the Tune trainable), ``worker`` (the Ray Train worker function), ``evaluation`` (a trial's
robust evaluation), ``ada`` (ADA for the trials of a search), ``state`` (the typed files of a search folder),
``capacity`` (does one trial fit the cluster), ``progress`` (trial events for the CLI) and ``cluster`` (every
use of Ray internals). Loading a search file starts nothing: it is checked completely before any cluster work.
"""
