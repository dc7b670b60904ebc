"""distat.dicts.flatten: the dotted keys of MLflow params and of the Pareto table's param columns."""

from __future__ import annotations

from types import MappingProxyType

from distat.dicts import flatten


def test_nested_keys_are_dotted_in_depth_first_order():
    params = {"lr": 1e-3, "method": {"name": "pgd", "opt": {"eps": 0.1}}, "tags": [1, {"a": 2}], "k": None}
    flat = flatten(params)
    assert flat == {"lr": 1e-3, "method.name": "pgd", "method.opt.eps": 0.1, "tags": [1, {"a": 2}], "k": None}
    assert list(flat) == ["lr", "method.name", "method.opt.eps", "tags", "k"]
    assert flat["tags"] is params["tags"]  # values exactly as given, lists not expanded


def test_prefix_separator_and_any_mapping():
    assert flatten({"a": MappingProxyType({"b": 1})}, prefix="param.", sep="/") == {"param.a/b": 1}
    assert flatten({1: {2: "x"}}) == {"1.2": "x"}


def test_skip_applies_at_every_depth():
    params = {"__distat__": {"x": 1}, "m": {"__distat__": 2, "y": 3}}
    assert flatten(params, skip={"__distat__"}) == {"m.y": 3}


def test_empty_mappings_vanish_unless_kept():
    assert flatten({"a": {}, "b": {"c": {}}, "d": 1}) == {"d": 1}
    assert flatten({"a": {}, "b": {"c": {}}, "d": 1}, keep_empty=True) == {"a": {}, "b.c": {}, "d": 1}
    assert flatten({}, keep_empty=True) == {}
