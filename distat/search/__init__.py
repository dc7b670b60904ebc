"""The search: YAML search spaces (:mod:`distat.search.space`) and the Ray Tune + Optuna tuner over them.

``space`` turns a search YAML into a validated :class:`~distat.search.space.SearchConfig`, an Optuna
define-by-run function for ``OptunaSearch(space=...)`` and one :class:`~distat.config.TrialConfig` per
sampled point. Nothing here starts Ray: a search file is checked completely before any cluster work.
"""
