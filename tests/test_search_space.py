"""Search spaces: the shipped YAMLs, one-line validation errors, Optuna define-by-run, per-trial configs."""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from distat import methods
from distat.attacks.recipes import AttackOptions
from distat.config import AugmentConfig, TrialConfig, load_trial_config
from distat.errors import ConfigError
from distat.search.space import (
    ALIASES,
    AttackOptionSettings,
    SearchConfig,
    apply_params,
    define_by_run,
    describe,
    interval_half_width,
    load_search_config,
    param_names,
    parse_search_config,
)

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ("demo", "adaptive_pgd", "adaptive_freelb", "adaptive_tavat", "baselines", "amda")

ADAPTIVE = ["adaptive_pgd", "adaptive_freelb"]

# A valid search on embedded defaults (no local paths), the starting point of every bad-input case.
BASE: dict[str, Any] = {
    "name": "t",
    "seed": 3,
    "trial": {
        "data": {"path": "builtin:rotten_tomatoes", "max_train_examples": 50, "max_dev_examples": 40,
                 "max_length": 32},
        "model": {"backbone": "default"},
        "method": {"name": "pgd", "adv_steps": 2, "init_mag": 0.07},
        "train": {"epochs": 1, "batch_size": 8},
    },
    "attack": {"recipe": "textfooler", "n": 20, "split": "dev", "actors": 1,
               "options": {"max_modify_rate": 0.3}},
    "search": {"num_samples": 4, "max_concurrent": 2},
    "resources": {"num_workers": 1, "use_gpu": False, "cpus_per_worker": 1},
    "params": {
        "method": {"choice": ["pgd", "freelb", *ADAPTIVE]},
        "adv_lr": {"loguniform": [0.01, 0.1]},
        "adv_steps": {"int": [1, 3]},
        "beta": {"choice": ["auto", 1.0, 2.0], "when": {"method": ADAPTIVE}},
        "w_lr": {"uniform": [0.5, 2.0], "step": 0.5, "when": {"method": ADAPTIVE}},
    },
}


def _config(**changes: Any) -> dict[str, Any]:
    """BASE with dotted-key changes; a value of ``...`` deletes the key."""
    data = copy.deepcopy(BASE)
    for key, value in changes.items():
        *parents, last = key.split("__")
        node = data
        for part in parents:
            node = node[part]
        if value is ...:
            del node[last]
        else:
            node[last] = value
    return data


def _write(tmp_path: Path, data: dict[str, Any] | str) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------------
# Shipped search spaces


@pytest.mark.parametrize("stem", SHIPPED)
def test_shipped_search_spaces_load(stem: str, monkeypatch: pytest.MonkeyPatch) -> None:
    path = ROOT / "search_spaces" / f"{stem}.yaml"
    text = path.read_text(encoding="utf-8")
    assert text.splitlines()[0].startswith(f"# distat search search_spaces/{stem}.yaml")
    if "../shared/data" in text and not (ROOT.parent / "shared" / "data").is_dir():
        pytest.skip("shared data not found next to the repository")
    monkeypatch.chdir(ROOT)  # relative paths in a search file are resolved against the current directory
    cfg = load_search_config(Path("search_spaces") / f"{stem}.yaml")
    assert cfg.name == stem
    for target in ("data", "model"):
        value = cfg.trial.get(target, {}).get("path" if target == "data" else "backbone", "")
        assert value.startswith(("builtin:", "default", "/")), value  # stored absolute
    assert "\n" in describe(cfg) and cfg.name in describe(cfg)
    study = optuna.create_study(directions=["maximize", "maximize"], sampler=optuna.samplers.RandomSampler(0))
    space = define_by_run(cfg)
    for i in range(5):
        trial = study.ask()
        space(trial)
        apply_params(cfg, trial.params, f"runs/x/{i}")  # every sample is a valid trial
        study.tell(trial, [0.5, 0.5])


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_trial_configs_load(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    cfg = load_trial_config(path)
    assert cfg.method.label


def test_search_configs_with_trades_knob_fixed_for_some_methods() -> None:
    """A base knob applies to the methods of the search that have it (baselines.yaml's shape)."""
    cfg = parse_search_config(_config(
        trial__method={"name": "standard", "adv_steps": 4, "init_mag": 0.0, "trades_beta": 3.0},
        params={"method": {"choice": ["standard", "fgm", "pgd", "trades"]},
                "adv_steps": {"int": [1, 2], "when": {"method": ["pgd", "trades"]}}},
    ))
    assert cfg.base_trial().method == methods.StandardSettings()
    fgm = apply_params(cfg, {"method": "fgm"}, "o").method
    assert type(fgm) is methods.FGMSettings and fgm.adv_lr == 0.03
    trades = apply_params(cfg, {"method": "trades", "adv_steps": 2}, "o").method
    assert (trades.adv_steps, trades.init_mag, trades.trades_beta) == (2, 0.0, 3.0)
    assert apply_params(cfg, {"method": "pgd"}, "o").method.adv_steps == 4


TABLE_2 = ["standard", "infobert", "flooding", "smart", "trades", "pgd", "adaptive_pgd", "freelb", "adaptive_freelb",
           "tavat", "adaptive_tavat"]


def test_baselines_yaml_is_table_2_at_the_papers_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every row of the adaptive-AT paper's Table 2 runs once, in order, at α = 0.04, β = k or (k+1)/2, TRADES 0.5
    and each method's own defaults otherwise."""
    if not (ROOT.parent / "shared" / "data").is_dir():
        pytest.skip("shared data not found next to the repository")
    monkeypatch.chdir(ROOT)
    cfg = load_search_config(Path("search_spaces/baselines.yaml"))
    assert [p["method"] for p in cfg.search.points] == TABLE_2 and cfg.search.num_samples == len(TABLE_2)
    rows = {name: apply_params(cfg, {"method": name}, "o").method for name in TABLE_2}
    assert {rows[n].label for n in TABLE_2} == set(TABLE_2)
    for name, settings in rows.items():
        if "adv_lr" in type(settings).model_fields:
            assert settings.adv_lr == 0.04, name
    assert rows["trades"].trades_beta == 0.5
    assert methods.build(rows["adaptive_pgd"]).beta == rows["adaptive_pgd"].adv_steps
    for name in ("adaptive_freelb", "adaptive_tavat"):
        assert methods.build(rows[name]).beta == (rows[name].adv_steps + 1) / 2, name
    assert (rows["tavat"].adv_steps, rows["tavat"].max_norm) == (2, 0.5)  # TA-VAT's own (TextDefender's)
    assert rows["adaptive_tavat"].adv_steps == 2
    for name in ("infobert", "flooding", "smart"):
        defaults = methods.parse_settings({"name": name}).model_dump()
        assert {k: v for k, v in rows[name].model_dump().items() if k != "adv_lr"} == \
               {k: v for k, v in defaults.items() if k != "adv_lr"}, name


@pytest.mark.parametrize("stem", ["adaptive_pgd", "adaptive_freelb", "adaptive_tavat"])
def test_shipped_spaces_keep_k_where_the_method_is_not_degenerate(stem: str) -> None:
    """FreeLB and TA-VAT at k = 1 train only at the start; adaptive AT at k = 1 has w ≡ [1]."""
    data = yaml.safe_load((ROOT / "search_spaces" / f"{stem}.yaml").read_text(encoding="utf-8"))
    assert data["params"]["adv_steps"]["int"][0] >= 2


def test_demo_is_small() -> None:
    cfg = load_search_config(ROOT / "search_spaces" / "demo.yaml")
    t = cfg.base_trial()
    assert t.data.path == "builtin:rotten_tomatoes" and t.model.backbone == "default"
    assert cfg.search.num_samples <= 4 and cfg.search.max_concurrent == 2
    assert t.data.max_train_examples <= 1000 and t.data.max_length <= 64 and t.train.epochs == 1
    k_max = cfg.params["adv_steps"].bounds[1] if "adv_steps" in cfg.params else t.method.adv_steps
    assert k_max <= 2 and cfg.attack.n <= 200 and cfg.attack.actors == 1
    assert not cfg.resources.use_gpu
    # a real trade-off: both ends of it fixed first, and robust intervals narrow enough to tell them apart
    assert [p["method"] for p in cfg.search.points] == ["standard", "freelb"]
    assert interval_half_width(cfg.attack.n) < 0.07


# --------------------------------------------------------------------------------------------------
# Bad inputs: one line, the file, the key path


def _missing(tmp_path: Path) -> str:
    return str(tmp_path / "no_such_folder")


BAD_CASES: list[tuple[str, Any, str, str]] = [
    # (id, change (kwargs for _config, or raw YAML text), key path, fragment of the message)
    ("unknown top-level key", {"nmae": "x"}, "nmae", "unknown key"),
    ("unknown key in params", {"params__adv_lr__lgo": True}, "params.adv_lr.lgo", "unknown key"),
    ("unknown key in attack", {"attack__recipee": "pwws"}, "attack.recipee", "allowed: recipe"),
    ("unknown key in attack options", {"attack__options__budget": 3}, "attack.options.budget", "unknown key"),
    ("unknown key in resources", {"resources__gpus": 1}, "resources.gpus", "unknown key"),
    ("unknown key in search", {"search__samples": 1}, "search.samples", "unknown key"),
    ("unknown key in trial", {"trial__data__pathh": "x"}, "trial.data.pathh", "unknown key"),
    ("empty range", {"params__adv_lr": {"uniform": [0.1, 0.1]}}, "params.adv_lr.uniform", "empty range"),
    ("range of no values", {"params__adv_lr": {"uniform": []}}, "params.adv_lr.uniform", "expected [low, high]"),
    ("inverted range", {"params__adv_lr": {"loguniform": [0.1, 0.01]}}, "params.adv_lr.loguniform", "inverted"),
    ("inverted int range", {"params__adv_steps": {"int": [3, 1]}}, "params.adv_steps.int", "inverted"),
    ("loguniform low 0", {"params__adv_lr": {"loguniform": [0, 0.1]}}, "params.adv_lr.loguniform",
     "low must be > 0"),
    ("loguniform low < 0", {"params__adv_lr": {"loguniform": [-1.0, 0.1]}}, "params.adv_lr.loguniform",
     "low must be > 0"),
    ("string for int", {"params__adv_steps": {"int": [1, "3"]}}, "params.adv_steps.int.1", "valid integer"),
    ("float for int", {"params__adv_steps": {"int": [1, 2.5]}}, "params.adv_steps.int.1", "valid integer"),
    ("string for float", {"params__adv_lr": {"uniform": ["0.1", 0.2]}}, "params.adv_lr.uniform.0",
     "valid number"),
    ("string for workers", {"resources__num_workers": "2"}, "resources.num_workers", "valid integer"),
    ("string for bool", {"resources__use_gpu": "yes"}, "resources.use_gpu", "valid boolean"),
    ("scalar, not a distribution", {"params__adv_lr": 0.03}, "params.adv_lr", "belong in trial"),
    ("no distribution", {"params__adv_lr": {"step": 0.1}}, "params.adv_lr", "give one distribution"),
    ("two distributions", {"params__adv_lr": {"uniform": [0.1, 0.2], "choice": [0.1]}}, "params.adv_lr",
     "only one"),
    ("empty choice", {"params__method": {"choice": []}}, "params.method.choice", "empty choice"),
    ("duplicate choice", {"params__method": {"choice": ["pgd", "pgd"]}}, "params.method.choice.1", "twice"),
    ("unknown method in choice", {"params__method": {"choice": ["pgd", "pgdd", *ADAPTIVE]}},
     "params.method.choice.1", "unknown method 'pgdd'"),
    ("bare adaptive in choice", {"params__method": {"choice": ["pgd", "adaptive", *ADAPTIVE]}},
     "params.method.choice.1", "needs base"),
    ("range on the method", {"params__method": {"loguniform": [1.0, 2.0]}, "params__beta": ...,
                             "params__w_lr": ...}, "params.method.loguniform", "use choice"),
    ("uniform on an int setting", {"params__adv_steps": {"uniform": [1.0, 3.0]}}, "params.adv_steps.uniform",
     "whole numbers"),
    ("k = 0 in range", {"params__adv_steps": {"int": [0, 3]}}, "params.adv_steps.int.0", "method.adv_steps"),
    ("beta 0 in range (under its condition)", {"params__beta": {"uniform": [0.0, 2.0], "when": {"method": ADAPTIVE}}},
     "params.beta.uniform.0", "method.beta"),
    ("step with loguniform", {"params__adv_lr": {"loguniform": [0.01, 0.1], "step": 0.01}},
     "params.adv_lr.step", "only for uniform and int"),
    ("step not dividing the range", {"params__w_lr": {"uniform": [0.5, 2.0], "step": 0.4}},
     "params.w_lr.step", "multiple of step"),
    ("fractional step for int", {"params__adv_steps": {"int": [1, 3], "step": 0.5}}, "params.adv_steps.step",
     "whole number"),
    ("unknown recipe", {"attack__recipe": "textfoolr"}, "attack.recipe", "unknown attack recipe 'textfoolr'"),
    ("attack on test", {"attack__split": "test"}, "attack.split", "dev split"),
    ("attack more than dev", {"attack__n": 41}, "attack.n", "max_dev_examples"),
    ("when on undeclared param", {"params__beta": {"choice": [1.0], "when": {"mthod": ["pgd"]}}},
     "params.beta.when.mthod", "not a searched parameter"),
    ("when on a later param", {"params__adv_lr": {"loguniform": [0.01, 0.1], "when": {"beta": [1.0]}}},
     "params.adv_lr.when.beta", "declared after"),
    ("when on a range param", {"params__beta": {"choice": [1.0], "when": {"adv_lr": [0.05]}}},
     "params.beta.when.adv_lr", "not categorical"),
    ("when on a value never chosen", {"params__beta": {"choice": [1.0], "when": {"method": ["adaptive_tavat"]}}},
     "params.beta.when.method.0", "cannot be adaptive_tavat"),
    ("unknown parameter", {"params__foo": {"uniform": [0.1, 0.2]}}, "params.foo", "unknown parameter 'foo'"),
    ("same setting twice", {"params__method.adv_lr": {"uniform": [0.1, 0.2]}}, "params.method.adv_lr",
     "like adv_lr"),
    ("searched output_dir", {"params__output_dir": {"choice": ["a"]}}, "params.output_dir", "set by the search"),
    ("mixup α ≤ 0", {"trial__method": {"name": "mixup"}, "params": {"mixup_alpha": {"uniform": [0.0, 1.0]}}},
     "params.mixup_alpha.uniform.0", "method.mix_alpha"),
    ("aug ratio > 1", {"params__aug_ratio": {"choice": [0.5, 1.5]}}, "params.aug_ratio.choice.1", "augment.ratio"),
    ("bad layer set", {"trial__method": {"name": "mixup"}, "params": {"mix_layers": {"choice": ["4,5", "x"]}}},
     "params.mix_layers.choice.1", "layer numbers"),
    ("no params", {"params": {}}, "params", "at least one"),
    ("output_dir in trial", {"trial__output_dir": "runs/x"}, "trial.output_dir", "set by the search"),
    ("bad trial value", {"trial__train__epochs": 0}, "trial.train.epochs", "greater than or equal to 1"),
    ("cuda without GPUs", {"trial__model__device": "cuda"}, "trial.model.device", "use_gpu"),
    ("0 workers", {"resources__num_workers": 0}, "resources.num_workers", "greater than or equal to 1"),
    ("negative CPUs", {"resources__cpus_per_worker": -1}, "resources.cpus_per_worker", "greater than or equal"),
    ("GPUs without use_gpu", {"resources__gpus_per_worker": 1}, "resources.gpus_per_worker", "use_gpu: true"),
    ("1.5 GPUs", {"resources__use_gpu": True, "resources__gpus_per_worker": 1.5}, "resources.gpus_per_worker",
     "fractions"),
    ("negative actors", {"attack__actors": -1}, "attack.actors", "greater than or equal to 0"),
    ("num_samples 0", {"search__num_samples": 0}, "search.num_samples", "greater than or equal to 1"),
    ("max_concurrent 0", {"search__max_concurrent": 0}, "search.max_concurrent", "greater than or equal to 1"),
    ("other objectives", {"search__objectives": ["clean_acc", "loss"]}, "search.objectives", "clean_acc"),
    ("floor above 1", {"search__clean_acc_floor": 1.5}, "search.clean_acc_floor", "less than or equal to 1"),
    ("name with a slash", {"name": "../up"}, "name", "letters, digits"),
    ("no name", {"name": ...}, "name", "Field required"),
    # method settings: each knob belongs to the methods that have it
    ("searched knob a chosen method lacks", {"params__trades_beta": {"uniform": [1.0, 2.0]}}, "params.trades_beta",
     "method 'pgd' has no setting trades_beta"),
    ("searched knob lacking under its condition", {"params__mixup_alpha": {"uniform": [1.0, 2.0],
                                                                         "when": {"method": ["adaptive_freelb"]}}},
     "params.mixup_alpha", "method 'adaptive_freelb' has no setting mix_alpha"),
    ("adaptive knob for every method", {"params__w_lr": {"uniform": [0.5, 2.0]}}, "params.w_lr",
     "method 'pgd' has no setting w_lr: search it only where it exists, e.g. when: {method: [adaptive_pgd, "
     "adaptive_freelb]}"),
    ("searched knob the fixed method lacks", {"params": {"mixup_alpha": {"uniform": [1.0, 2.0]}}}, "params.mixup_alpha",
     "method 'pgd' has no setting mix_alpha"),
    ("base knob of no method of the search", {"trial__method": {"name": "pgd", "mix_alpha": 0.4}},
     "trial.method.mix_alpha", "unknown key for every method this search runs (pgd, freelb, adaptive_pgd"),
    ("base knob of another method", {"trial__method": {"name": "pgd", "mix_alpha": 0.4},
                                     "params": {"adv_lr": {"uniform": [0.01, 0.1]}}},
     "trial.method.mix_alpha", "unknown key for method 'pgd'"),
    ("base knob out of bounds", {"trial__method": {"name": "pgd", "adv_steps": 0}}, "trial.method.adv_steps",
     "greater than or equal to 1"),
    ("base knob for another method out of bounds", {"trial__method": {"name": "pgd", "w_lr": -1.0}},
     "params.method.choice.2", "method.w_lr: Input should be greater than or equal to 0"),
    ("base name in the long form without base", {"trial__method": {"name": "adaptive"}}, "trial.method",
     "needs base"),
    # search.points: fixed rows tried first
    ("more points than trials", {"search__points": [{"method": "pgd"}] * 5}, "search.points", "num_samples is 4"),
    ("point names no parameter", {"search__points": [{"mthod": "pgd"}]}, "search.points.0.mthod",
     "not a parameter of this search"),
    ("point value not a choice", {"search__points": [{"method": "tavat"}]}, "search.points.0.method",
     "tavat is not a value of choice [pgd, freelb, adaptive_pgd, adaptive_freelb]"),
    ("point value out of range", {"search__points": [{"adv_steps": 4}]}, "search.points.0.adv_steps",
     "4 is not a value of int [1, 3]"),
    ("point value of another type", {"search__points": [{"adv_steps": "2"}]}, "search.points.0.adv_steps",
     "not a value"),
    ("point sets a parameter its condition disables", {"search__points": [{"method": "pgd", "beta": 1.0}]},
     "search.points.0.beta", "condition (method in [adaptive_pgd, adaptive_freelb]) does not hold"),
]


@pytest.mark.parametrize(("change", "key", "fragment"), [c[1:] for c in BAD_CASES], ids=[c[0] for c in BAD_CASES])
def test_bad_input_is_one_line_naming_the_key(change: Any, key: str, fragment: str, tmp_path: Path) -> None:
    path = _write(tmp_path, _config(**change))
    with pytest.raises(ConfigError) as info:
        load_search_config(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: {key}: "), message
    assert fragment in message, message


@pytest.mark.parametrize("which", ["data", "backbone", "searched data"])
def test_missing_local_paths(which: str, tmp_path: Path) -> None:
    missing = _missing(tmp_path)
    change, key = {
        "data": ({"trial__data__path": missing}, "trial.data.path"),
        "backbone": ({"trial__model__backbone": missing}, "trial.model.backbone"),
        "searched data": ({"params__data.path": {"choice": ["builtin:rotten_tomatoes", missing]}},
                          "params.data.path.choice.1"),
    }[which]
    path = _write(tmp_path, _config(**change))
    with pytest.raises(ConfigError) as info:
        load_search_config(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: {key}: "), message
    assert "does not exist" in message and "no_such_folder" in message


def test_malformed_yaml(tmp_path: Path) -> None:
    path = _write(tmp_path, "name: t\nparams: {adv_lr: {uniform: [0.1, 0.2]}\ntrial: [\n")
    with pytest.raises(ConfigError) as info:
        load_search_config(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}:") and "invalid YAML" in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_search_config(tmp_path / "nope.yaml")


def test_base_is_valid() -> None:
    """The bad cases start from a valid config, so each fails for its own reason."""
    cfg = parse_search_config(_config())
    assert param_names(cfg) == ["method", "adv_lr", "adv_steps", "beta", "w_lr"]
    assert cfg.seed == 3 and cfg.search.modes == ["max", "max"] and cfg.resources.gpus == 0


# --------------------------------------------------------------------------------------------------
# define-by-run


def _space_config(**changes: Any) -> SearchConfig:
    data = _config(**changes)
    data["params"]["data.max_length"] = {"int": [16, 48], "step": 16}
    data["params"]["norm_type"] = {"choice": ["l2", "linf"]}
    data["params"]["max_norm"] = {"uniform": [1.0, 2.0], "when": {"method": ["freelb"], "norm_type": ["linf"]}}
    return parse_search_config(data)


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_define_by_run_with_optuna(sampler: str) -> None:
    cfg = _space_config()
    space = define_by_run(cfg)
    samplers = {"random": optuna.samplers.RandomSampler(seed=1),
                "tpe": optuna.samplers.TPESampler(seed=1, n_startup_trials=8)}
    study = optuna.create_study(directions=["maximize", "maximize"], sampler=samplers[sampler])
    seen_methods: set[str] = set()
    conditional = {"beta": 0, "w_lr": 0, "max_norm": 0}
    for i in range(30):
        trial = study.ask()
        assert space(trial) == {}
        p = trial.params
        for name in ("method", "adv_lr", "adv_steps", "data.max_length", "norm_type"):
            assert name in p, (name, p)
        assert p["method"] in ["pgd", "freelb", *ADAPTIVE]
        seen_methods.add(p["method"])
        assert 0.01 <= p["adv_lr"] <= 0.1 and isinstance(p["adv_lr"], float)
        assert p["adv_steps"] in (1, 2, 3) and isinstance(p["adv_steps"], int)
        assert p["data.max_length"] in (16, 32, 48)
        adaptive = p["method"] in ADAPTIVE
        assert ("beta" in p) == adaptive and ("w_lr" in p) == adaptive, p
        if adaptive:
            assert p["beta"] in ("auto", 1.0, 2.0)
            assert p["w_lr"] in (0.5, 1.0, 1.5, 2.0)
        both = p["method"] == "freelb" and p["norm_type"] == "linf"
        assert ("max_norm" in p) == both, p
        if both:
            assert 1.0 <= p["max_norm"] <= 2.0
        for name in conditional:
            conditional[name] += name in p
        assert set(p) <= set(param_names(cfg))
        apply_params(cfg, p, f"runs/t/{i}")
        study.tell(trial, [(i * 7 % 10) / 10, (i * 3 % 10) / 10])
    assert seen_methods == {"pgd", "freelb", *ADAPTIVE}
    assert 0 < conditional["beta"] < 30 and 0 < conditional["max_norm"] < 30


def test_define_by_run_through_ray_optuna_search() -> None:
    """Ray's OptunaSearch accepts the function and returns every sampled name (dotted ones unchanged)."""
    optuna_search = pytest.importorskip("ray.tune.search.optuna")
    cfg = _space_config()
    searcher = optuna_search.OptunaSearch(space=define_by_run(cfg), metric=["clean_acc", "robust_acc"],
                                          mode=["max", "max"], seed=0)
    for i in range(4):
        config = searcher.suggest(f"t{i}")
        assert {"method", "adv_lr", "adv_steps", "data.max_length", "norm_type"} <= set(config)
        assert apply_params(cfg, config, "runs/t").data.max_length == config["data.max_length"]
        searcher.on_trial_complete(f"t{i}", {"clean_acc": 0.5, "robust_acc": 0.1})


def test_points_run_first_in_order_through_ray_optuna_search() -> None:
    """``search.points`` are the first trials, in order; what a point leaves out is sampled."""
    from distat.search.searcher import build_searcher

    points = [{"method": "freelb", "adv_steps": 2}, {"method": "adaptive_pgd", "beta": 2.0}]
    cfg = _space_config(search__num_samples=5, search__points=points)
    assert cfg.search.points == tuple(points)
    searcher = build_searcher(define_by_run(cfg), ["clean_acc", "robust_acc"], seed=0, clean_acc_floor=None,
                              points_to_evaluate=list(cfg.search.points))
    suggested = []
    for i in range(3):
        suggested.append(searcher.suggest(f"t{i}"))
        searcher.on_trial_complete(f"t{i}", {"clean_acc": 0.5, "robust_acc": 0.1})
    assert {k: suggested[0][k] for k in points[0]} == points[0] and "beta" not in suggested[0]
    assert {k: suggested[1][k] for k in points[1]} == points[1] and 0.01 <= suggested[1]["adv_lr"] <= 0.1
    assert apply_params(cfg, suggested[1], "runs/t").method.beta == 2.0


# --------------------------------------------------------------------------------------------------
# apply_params


def test_apply_params_builds_the_trial_config() -> None:
    cfg = _space_config()
    t = apply_params(cfg, {"method": "adaptive_freelb", "adv_lr": 0.05, "adv_steps": 3, "beta": "auto",
                           "w_lr": 1.5, "data.max_length": 48}, "runs/s/trial_1")
    assert isinstance(t, TrialConfig)
    assert (t.method.name, t.method.base, t.method.label) == ("adaptive", "freelb", "adaptive_freelb")
    assert t.method.beta is None  # auto
    assert (t.method.adv_lr, t.method.adv_steps, t.method.w_lr) == (0.05, 3, 1.5)
    assert t.method.init_mag == 0.07  # a knob of the base trial survives the change of method
    assert t.data.max_length == 48 and t.data.max_train_examples == 50
    assert t.output_dir == "runs/s/trial_1" and t.train.batch_size == 8

    t = apply_params(cfg, {"method": "adaptive_pgd", "beta": 2.0}, "o")
    assert (t.method.name, t.method.base, t.method.beta) == ("adaptive", "pgd", 2.0)
    assert t.method.adv_steps == 2  # not searched here: the base value

    base = cfg.base_trial("o")
    assert base.method.name == "pgd" and base.data.max_length == 32
    assert cfg.trial["method"] == BASE["trial"]["method"]  # the base mapping is never modified


def test_apply_params_method_replaces_a_base_adaptive_method() -> None:
    data = _config(trial__method={"name": "adaptive", "base": "pgd", "adv_steps": 2, "w_lr": 3.0})
    cfg = parse_search_config(data)
    assert cfg.base_trial().method.label == "adaptive_pgd"
    t = apply_params(cfg, {"method": "freelb"}, "o")
    # w_lr is adaptive AT's: FreeLB has no such setting, so the base trial's applies only to adaptive methods
    assert (t.method.name, t.method.label, t.method.adv_steps) == ("freelb", "freelb", 2)
    assert "w_lr" not in type(t.method).model_fields and "base" not in type(t.method).model_fields
    t = apply_params(cfg, {"method": "adaptive_freelb"}, "o")
    assert (t.method.base, t.method.w_lr, t.method.adv_steps) == ("freelb", 3.0, 2)


def test_apply_params_aliases_and_dotted_paths() -> None:
    data = _config(params={"lr": {"loguniform": [1e-5, 1e-3]}, "train.warmup_ratio": {"uniform": [0.0, 0.2]},
                           "model.bf16": {"choice": [True, False]}, "seed": {"choice": [1, 2]}})
    cfg = parse_search_config(data)
    t = apply_params(cfg, {"lr": 3e-4, "train.warmup_ratio": 0.05, "model.bf16": False, "seed": 2}, "o")
    assert (t.train.lr, t.train.warmup_ratio, t.model.bf16, t.seed) == (3e-4, 0.05, False, 2)


def test_apply_params_rejects_unknown_and_invalid() -> None:
    cfg = parse_search_config(_config())
    with pytest.raises(ConfigError, match="unknown parameter"):
        apply_params(cfg, {"adv_lrr": 0.1}, "o")
    with pytest.raises(ConfigError, match="method.adv_steps"):
        apply_params(cfg, {"adv_steps": 0}, "o")


def test_relative_paths_are_stored_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "bert").mkdir()
    monkeypatch.chdir(tmp_path)
    cfg = parse_search_config(_config(trial__data__path="data", trial__model__backbone="./bert"))
    assert cfg.trial["data"]["path"] == str(tmp_path / "data")
    monkeypatch.chdir(ROOT)  # a Ray trial runs in its own directory
    t = apply_params(cfg, {}, "o")
    assert (t.data.path, t.model.backbone) == (str(tmp_path / "data"), str(tmp_path / "bert"))


# --------------------------------------------------------------------------------------------------
# Round trip and tables


def test_model_dump_round_trips() -> None:
    """The tuner ships the config to trials as JSON; validating it again gives the same config."""
    cfg = _space_config()
    dumped = cfg.model_dump(mode="json")
    assert dumped["params"]["adv_steps"]["int"] == [1, 3]
    again = SearchConfig.model_validate(dumped)
    assert again == cfg
    assert describe(again) == describe(cfg)


def test_alias_table_points_into_trial_config() -> None:
    fields = {f"{section}.{name}" for section in ("data", "model", "train")
              for name in type(getattr(TrialConfig(), section)).model_fields}
    # the method section is the union of every method's settings
    fields |= {f"method.{name}" for cls in methods.REGISTRY.values() for name in cls.settings.model_fields}
    fields |= {f"augment.{name}" for name in AugmentConfig.model_fields}
    for alias, target in ALIASES.items():
        assert target in fields, (alias, target)
    for name in ("adv_lr", "adv_steps", "init_mag", "max_norm", "norm_type", "beta", "w_lr", "w_init",
                 "trades_beta", "lr", "epochs", "batch_size", "weight_decay", "warmup_ratio", "method"):
        assert ALIASES[name] is not None


def test_amda_params_and_one_pool_for_the_largest_ratio() -> None:
    cfg = parse_search_config(_config(
        trial__method={"name": "mixup"}, trial__augment={"recipe": "pwws"},
        params={"aug_ratio": {"choice": [0.25, 0.5, 1.0]}, "mixup_alpha": {"loguniform": [0.2, 4.0]},
                "mix_type": {"choice": ["tmix", "smix"]}, "mix_layers": {"choice": ["4,5,6", "6"]}},
    ))
    t = apply_params(cfg, {"aug_ratio": 0.25, "mixup_alpha": 2.0, "mix_type": "smix", "mix_layers": "4,5,6"}, "o")
    assert t.augment.ratio == 0.25 and t.augment.pool_ratio == 1.0 and t.augment.effective_pool_ratio == 1.0
    assert (t.method.name, t.method.mix_alpha, t.method.mix_type, t.method.mix_layers) == ("mixup", 2.0, "smix",
                                                                                            (4, 5, 6))
    # without a searched ratio the pool is the trial's own ratio
    fixed = parse_search_config(_config(trial__augment={"ratio": 0.3}))
    assert fixed.base_trial().augment.pool_ratio is None and fixed.base_trial().augment.effective_pool_ratio == 0.3


def test_attack_options_mirror_the_recipes() -> None:
    assert set(AttackOptionSettings.model_fields) == {f.name for f in dataclasses.fields(AttackOptions)}
    cfg = parse_search_config(_config())
    options = cfg.attack.options.to_options()
    assert isinstance(options, AttackOptions) and options.max_modify_rate == 0.3
    assert options.max_candidates is None and not math.isnan(options.max_modify_rate)
