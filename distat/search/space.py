"""Search spaces: a search YAML in, a validated :class:`SearchConfig` out, then one trial config per point.

A search file (``search_spaces/*.yaml``) has these keys::

    name: demo                 # [A-Za-z0-9_][A-Za-z0-9_.-]*: the results folder and the MLflow parent run
    seed: 13                   # the search's seed: Optuna's sampler and the attacked dev subset
    trial: {...}               # a TrialConfig without output_dir: the fixed settings of every trial
    attack: {recipe: textfooler, n: 40, split: dev, actors: 1, cpus_per_actor: 1, gpus_per_actor: 0,
             options: {max_candidates: ..., max_modify_rate: ..., query_budget: ..., sim_threshold: ...,
                       stopwords_ignore_case: false}}
    search: {num_samples: 4, max_concurrent: 2, objectives: [clean_acc, robust_acc], clean_acc_floor: null}
    resources: {num_workers: 1, use_gpu: false, cpus_per_worker: 1, gpus_per_worker: null}
    params:                    # searched parameters, suggested in this order
      method: {choice: [pgd, adaptive_pgd]}
      adv_lr: {loguniform: [0.01, 0.1]}
      adv_steps: {int: [1, 3], step: 1}
      beta: {choice: [auto, 2.0], when: {method: [adaptive_pgd]}}

A parameter has one distribution (``choice``, ``uniform``, ``loguniform`` or ``int``, both ends included),
an optional ``step`` (``uniform`` and ``int``) and an optional ``when``: it is sampled only if every named
categorical parameter, declared before it, took one of the listed values. Names are the short aliases of
:data:`ALIASES` or dotted paths into the trial config (``data.max_length``). ``beta: auto`` means the
method's default β.

Relative local paths (``trial.data.path``, ``trial.model.backbone``) are resolved against the current
directory at load time and stored absolute, because Ray runs each trial in its own working directory.

Everything is checked when the file is loaded, before any cluster work: every problem is a one-line
:class:`~distat.errors.ConfigError` naming the file and the key path, and every parameter's extreme values
(each choice, each range end) are applied to the base trial and validated as a full trial config.
"""

from __future__ import annotations

import copy
import functools
import math
import os
import re
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from distat import methods
from distat.attacks.recipes import RECIPES, AttackOptions
from distat.config import TrialConfig, describe_dev, read_yaml, set_dotted
from distat.errors import ConfigError, KeyedError, first_problem, format_validation_error
from distat.settings import Strict

if TYPE_CHECKING:
    import optuna

__all__ = [
    "ALIASES",
    "CLEAN_METRICS",
    "OBJECTIVES",
    "AttackOptionSettings",
    "AttackSettings",
    "RecipeSettings",
    "StaticSetSettings",
    "TestStageSettings",
    "ParamSpec",
    "ResourceSettings",
    "SearchConfig",
    "SearchSettings",
    "apply_params",
    "define_by_run",
    "describe",
    "load_search_config",
    "param_names",
    "param_target",
    "parse_search_config",
    "sampled_params",
]

#: Short parameter names → the TrialConfig path they set. ``None``: reserved for a feature that is not
#: implemented yet (an error says so); enabling it is giving its path here.
ALIASES: dict[str, str | None] = {
    "method": "method.name",
    "adv_lr": "method.adv_lr",  # α: step size of each ascent step
    "adv_steps": "method.adv_steps",  # k
    "init_mag": "method.init_mag",
    "max_norm": "method.max_norm",
    "norm_type": "method.norm_type",
    "beta": "method.beta",  # adaptive AT's β; `auto` = the method's default
    "w_lr": "method.w_lr",
    "w_init": "method.w_init",
    "trades_beta": "method.trades_beta",
    "lr": "train.lr",
    "epochs": "train.epochs",
    "batch_size": "train.batch_size",
    "weight_decay": "train.weight_decay",
    "warmup_ratio": "train.warmup_ratio",
    # AMDA: adversarial data augmentation (trial.augment) and hidden-state mixup (method: mixup)
    "aug_ratio": "augment.ratio",  # fraction of the training set attacked for the trial's ADA examples
    "mixup_alpha": "method.mix_alpha",  # λ ~ Beta(α, α)
    "mix_type": "method.mix_type",  # tmix | smix
    "mix_layers": "method.mix_layers",  # a layer set as a string, e.g. "4,5,6"
    "mix_weight": "method.mix_weight",
}

#: Targets where the categorical value ``auto`` stands for None (the method's own default).
AUTO_IS_NONE = frozenset({"method.beta"})

OBJECTIVES = ("clean_acc", "robust_acc")  # both maximised: the default objectives
#: What the clean objective may be: accuracy, or for imbalanced data a score the majority class cannot game.
CLEAN_METRICS = ("clean_acc", "macro_f1", "balanced_acc")

_NOT_SEARCHABLE = {
    "output_dir": "output_dir is set by the search (one folder per trial)",
    "method.base": "search `method` with adaptive_<base> values instead of method.base",
}
_PATH_TARGETS = ("data.path", "model.backbone")
_REMOTE_DATA = ("builtin:", "hf:")
_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_PLACEHOLDER_DIR = "<trial output_dir>"
_KINDS = ("choice", "uniform", "loguniform", "int")

# Numbers are strict: a string such as "3" in a search file is a mistake, not a number. Floats accept ints.
Number = Annotated[float, Field(strict=True)]


# keys of the trial config that the search sets itself: not listed among the allowed keys of an error
_HIDDEN = frozenset({"output_dir"})


# --------------------------------------------------------------------------------------------------
# Parameter names and their config paths


@functools.cache
def _trial_fields() -> dict[str, Any]:
    """Every leaf setting of TrialConfig: dotted path → its pydantic FieldInfo. The ``method`` section is the
    union of every method's settings, so its paths are those of all the methods (the first one found wins:
    a knob shared by several methods is declared once, in a common base class)."""
    out: dict[str, Any] = {}

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, info in model.model_fields.items():
            nested = _models_of(info.annotation)
            if nested:
                for member in nested:
                    walk(member, f"{prefix}{name}.")
            else:
                out.setdefault(prefix + name, info)

    walk(TrialConfig, "")
    return out


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _models_of(annotation: Any) -> list[type[BaseModel]]:
    """The settings models of a field typed ``Model``, ``Model | None`` (an optional section) or a union of
    models (the method settings), else none."""
    if _is_model(annotation):
        return [annotation]
    if get_origin(annotation) in (typing.Union, types.UnionType):
        args = get_args(annotation)
        models = [a for a in args if _is_model(a)]
        if models and all(a is type(None) or _is_model(a) for a in args):
            return models
    return []


def _method_fields(label: str | None) -> frozenset[str] | None:
    """The keys the method ``label`` (``pgd``, ``adaptive_freelb``) accepts; None for no known method."""
    cls = methods.settings_class(label) if label else None
    return frozenset(cls.model_fields) if cls is not None else None


def _labels(names: typing.Iterable[Any]) -> list[str]:
    """The method labels of ``names`` (choices of the ``method`` parameter, labels), in order, once each;
    names of no method are left out (their own check reports them)."""
    out: list[str] = []
    for name in names:
        label = methods.label_of({"name": name}) if isinstance(name, str) else None
        if label and label not in out:
            out.append(label)
    return out


def _fit_method(method: dict[str, Any]) -> dict[str, Any]:
    """A raw ``method`` mapping with only the knobs its named method has (unchanged for an unknown name).

    In a search that chooses the method, the base trial's method knobs are settings for whichever method a
    trial runs: each applies to the methods that have it. That every knob belongs to one of the search's
    methods is checked at load time (:meth:`SearchConfig._method_knobs`).
    """
    fields = _method_fields(methods.label_of(method))
    if fields is None:
        return method
    return {k: v for k, v in method.items() if k in fields or k in ("name", "base")}


def param_target(name: str) -> str:
    """The TrialConfig path parameter ``name`` sets; ValueError saying why if it sets none."""
    if name in ALIASES:
        target = ALIASES[name]
        if target is None:
            raise ValueError(f"{name} is not available in this version of distat")
        return target
    if name in _NOT_SEARCHABLE:
        raise ValueError(_NOT_SEARCHABLE[name])
    if name not in _trial_fields():
        aliases = ", ".join(a for a, t in ALIASES.items() if t is not None)
        raise ValueError(f"unknown parameter {name!r}: use an alias ({aliases}) or a dotted path into the "
                         "trial config such as data.max_length")
    return name


def _range_kinds(target: str) -> set[str]:
    """The range distributions a target's type accepts (a choice fits every type)."""
    annotation = _trial_fields()[target].annotation
    members = get_args(annotation) if get_origin(annotation) in (typing.Union, types.UnionType) else (annotation,)
    if float in members:
        return {"uniform", "loguniform", "int"}
    return {"int"} if int in members else set()


def _is_scalar(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return value is None or isinstance(value, str | int | bool)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    return "null" if value is None else str(value)


def _fmt_list(values: typing.Iterable[Any]) -> str:
    return "[" + ", ".join(_fmt(v) for v in values) + "]"


# --------------------------------------------------------------------------------------------------
# Models


class ParamSpec(Strict):
    """One searched parameter: exactly one distribution, an optional step, an optional condition."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, serialize_by_alias=True)

    choice: tuple[Any, ...] | None = None  # categorical: str, number, bool or null values
    uniform: tuple[Number, Number] | None = None
    loguniform: tuple[Number, Number] | None = None
    int_: tuple[StrictInt, StrictInt] | None = Field(default=None, alias="int")  # both ends included
    step: Any = None  # uniform / int only; (high - low) must be a multiple of it
    when: dict[str, tuple[Any, ...]] | None = None  # {earlier categorical param: [values]}, all must hold

    @model_validator(mode="before")
    @classmethod
    def _mapping(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise ValueError(f"expected a distribution such as {{choice: [...]}}, {{uniform: [low, high]}}, "
                             f"{{loguniform: [low, high]}} or {{int: [low, high]}}, got {data!r} (fixed values "
                             "belong in trial:)")
        return data

    @field_validator("uniform", "loguniform", "int_", mode="before")
    @classmethod
    def _pair(cls, value: Any) -> Any:
        if value is not None and (not isinstance(value, list | tuple) or len(value) != 2):
            raise ValueError(f"expected [low, high], got {value!r}")
        return value

    @field_validator("uniform", "loguniform", "int_")
    @classmethod
    def _range(cls, value: tuple[float, float] | None, info: ValidationInfo) -> tuple[float, float] | None:
        if value is None:
            return value
        low, high = value
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ValueError("low and high must be finite")
        if low == high:
            raise ValueError(f"empty range [{_fmt(low)}, {_fmt(high)}] (a fixed value belongs in trial:)")
        if low > high:
            raise ValueError(f"inverted range: low {_fmt(low)} > high {_fmt(high)}")
        if info.field_name == "loguniform" and low <= 0:
            raise ValueError(f"low must be > 0, got {_fmt(low)}")
        return value

    @field_validator("choice", mode="before")
    @classmethod
    def _choice_list(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, list | tuple):
            raise ValueError(f"expected a list of values, got {value!r}")
        return value

    @field_validator("choice")
    @classmethod
    def _choices(cls, value: tuple[Any, ...] | None) -> tuple[Any, ...] | None:
        if value is None:
            return value
        if not value:
            raise ValueError("empty choice: give at least one value")
        seen: set[tuple[bool, Any]] = set()
        for i, v in enumerate(value):
            if not _is_scalar(v):
                raise KeyedError((i,), f"choices must be strings, finite numbers, booleans or null, got {v!r}")
            key = (isinstance(v, bool), v)
            if key in seen:
                raise KeyedError((i,), f"{_fmt(v)} is listed twice")
            seen.add(key)
        return value

    @field_validator("when", mode="before")
    @classmethod
    def _when_lists(cls, value: Any) -> Any:
        if isinstance(value, dict):  # `when: {method: pgd}` means [pgd]
            return {k: (v if isinstance(v, list | tuple) else [v]) for k, v in value.items()}
        return value

    @field_validator("when")
    @classmethod
    def _when(cls, value: dict[str, tuple[Any, ...]] | None) -> dict[str, tuple[Any, ...]] | None:
        if value is None:
            return value
        if not value:
            raise ValueError("empty condition: name at least one earlier parameter")
        for dep, values in value.items():
            if not values:
                raise KeyedError((dep,), "empty list of values")
            for i, v in enumerate(values):
                if not _is_scalar(v):
                    raise KeyedError((dep, i), f"expected a string, number, boolean or null, got {v!r}")
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> ParamSpec:
        given = [k for k in _KINDS if self._raw(k) is not None]
        if not given:
            raise ValueError("give one distribution: choice, uniform, loguniform or int")
        if len(given) > 1:
            raise ValueError(f"give only one distribution, not {' and '.join(given)}")
        kind = given[0]
        step = self.step
        if step is None:
            return self
        if kind not in ("uniform", "int"):
            raise KeyedError(("step",), f"step is only for uniform and int, not {kind}")
        if isinstance(step, bool) or not isinstance(step, int | float) or not math.isfinite(step):
            raise KeyedError(("step",), f"expected a number, got {step!r}")
        if step <= 0:
            raise KeyedError(("step",), f"must be > 0, got {_fmt(step)}")
        low, high = self.bounds
        if kind == "int":
            if not isinstance(step, int):
                raise KeyedError(("step",), f"must be a whole number for int, got {step!r}")
            if (high - low) % step:
                raise KeyedError(("step",), f"high - low ({high - low}) must be a multiple of step {step}")
        else:
            n = (high - low) / step
            if abs(n - round(n)) > 1e-9 * max(1.0, abs(n)):
                raise KeyedError(("step",), f"high - low ({_fmt(high - low)}) must be a multiple of step "
                                            f"{_fmt(step)}")
        return self

    def _raw(self, kind: str) -> Any:
        return self.int_ if kind == "int" else getattr(self, kind)

    @property
    def kind(self) -> str:
        """``choice``, ``uniform``, ``loguniform`` or ``int``."""
        return next(k for k in _KINDS if self._raw(k) is not None)

    @property
    def bounds(self) -> tuple[Any, Any]:
        """(low, high) of a range distribution."""
        if self.kind == "choice":
            raise TypeError("a choice has no bounds")
        return self._raw(self.kind)

    def points(self) -> Iterator[tuple[tuple[str | int, ...], Any]]:
        """The values checked at load time, each with its key path: every choice, both range ends."""
        if self.kind == "choice":
            for i, value in enumerate(self.choice or ()):
                yield ("choice", i), value
        else:
            low, high = self.bounds
            yield (self.kind, 0), low
            yield (self.kind, 1), high

    def admits(self, value: Any) -> bool:
        """Whether ``value`` is one this distribution can give."""
        if self.kind == "choice":
            return any(value == c and isinstance(value, bool) == isinstance(c, bool) for c in self.choice or ())
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        low, high = self.bounds
        if self.kind == "int" and value != int(value):
            return False
        return low <= value <= high

    def applies(self, chosen: dict[str, Any]) -> bool:
        """Whether the condition holds for the values chosen so far (always, without ``when``)."""
        return all(dep in chosen and chosen[dep] in values for dep, values in (self.when or {}).items())

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        """Ask an Optuna trial (or Ray's suggest-captor around one) for this parameter's value."""
        kind = self.kind
        if kind == "choice":
            return trial.suggest_categorical(name, list(self.choice or ()))
        low, high = self.bounds
        if kind == "int":
            return trial.suggest_int(name, low, high, step=self.step or 1)
        if kind == "loguniform":
            return trial.suggest_float(name, low, high, log=True)
        return trial.suggest_float(name, low, high, step=None if self.step is None else float(self.step))

    def describe(self) -> str:
        kind = self.kind
        text = f"choice {_fmt_list(self.choice or ())}" if kind == "choice" else f"{kind} {_fmt_list(self.bounds)}"
        if self.step is not None:
            text += f" step {_fmt(self.step)}"
        if self.when:
            text += "  if " + " and ".join(f"{dep} in {_fmt_list(v)}" for dep, v in self.when.items())
        return text


class AttackOptionSettings(Strict):
    """:class:`distat.attacks.recipes.AttackOptions` as YAML; null keeps the recipe's own value."""

    max_candidates: StrictInt | None = Field(default=None, ge=1)  # K: candidates per word
    max_modify_rate: Number | None = Field(default=None, gt=0, le=1)  # fraction of words perturbed at most
    query_budget: StrictInt | None = Field(default=None, ge=1)  # model queries per example
    sim_threshold: Number | None = Field(default=None, ge=-1, le=1)  # sentence-encoder cosine threshold
    stopwords_ignore_case: StrictBool | None = None  # null = false: TextAttack's case-sensitive stopwords

    def to_options(self) -> AttackOptions:
        return AttackOptions(**{**self.model_dump(), "stopwords_ignore_case": bool(self.stopwords_ignore_case)})

    def over(self, shared: AttackOptionSettings) -> AttackOptionSettings:
        """These options where set, ``shared``'s elsewhere (a recipe's own options over the attack's common ones)."""
        mine = self.model_dump(exclude_none=True)
        return AttackOptionSettings(**{**shared.model_dump(), **mine})


_ATTACK_NAME_RE = re.compile(r"[a-z][a-z0-9_]*")
_RESERVED_NAMES = {"min": "the worst-case objective", "clean": "the report's clean column",
                   "objective": "the report's objective column"}


def _attack_name(value: str) -> str:
    if not _ATTACK_NAME_RE.fullmatch(value):
        raise ValueError(f"{value!r}: an attack's name is a metric suffix: lower-case letters, digits and '_', "
                         "starting with a letter")
    if value in _RESERVED_NAMES:
        raise ValueError(f"{value!r} is reserved ({_RESERVED_NAMES[value]})")
    return value


class RecipeSettings(Strict):
    """One attack recipe of the list, with its own options over the attack's common ``options``. A bare string
    in the YAML (``- bae``) is the recipe with the common options."""

    recipe: str
    name: str | None = None  # the metric suffix (robust_acc.<name>); default: the recipe; needed for a repeat
    options: AttackOptionSettings = AttackOptionSettings()

    @model_validator(mode="before")
    @classmethod
    def _bare(cls, data: Any) -> Any:
        return {"recipe": data} if isinstance(data, str) else data

    @field_validator("recipe")
    @classmethod
    def _recipe(cls, value: str) -> str:
        if value not in RECIPES:
            raise ValueError(f"unknown attack recipe {value!r} (choose from {', '.join(RECIPES)})")
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        return None if value is None else _attack_name(value)

    @property
    def key(self) -> str:
        return self.name or self.recipe


class StaticSetSettings(Strict):
    """A saved adversarial set every evaluated model is scored on (AdvGLUE, or one exported by ``distat attack
    --export``): a split file, or a dataset folder with ``split``. Relative paths are taken from the current
    directory when the search is loaded."""

    name: str  # the metric suffix: robust_acc.<name>
    path: str
    split: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _attack_name(value)

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        path = Path(os.path.expanduser(value))
        if not path.exists():
            raise ValueError(f"{value}: no such file or folder")
        return str(path.resolve())


WORST_CASE = "min"


class AttackSettings(Strict):
    """Robust evaluation of each trial's own model after training, on a fixed seeded dev subset: one or several
    recipes (``recipe``, or a list in ``recipes``) and static sets; the search's robust objective is one named
    attack's robust accuracy or the worst case over all of them (``objective: min``, the default)."""

    recipe: str | None = None  # one recipe (shorthand for recipes: [<recipe>]); the default is textfooler
    recipes: tuple[RecipeSettings, ...] = ()
    static_sets: tuple[StaticSetSettings, ...] = ()
    objective: str = WORST_CASE  # `min` over every recipe and static set, or one of their names
    n: StrictInt = Field(default=100, ge=1)  # examples attacked (the same subset for every trial)
    split: str = "dev"  # the trial's data.dev_split; the objectives never look at test
    stratify: StrictBool = False  # a label-balanced subset: a minority class is attacked as often as the others
    actors: StrictInt = Field(default=1, ge=0)  # Ray attack actors; 0 = attack inside the trial
    cpus_per_actor: Number = Field(default=1.0, gt=0)
    gpus_per_actor: Number = Field(default=0.0, ge=0)
    options: AttackOptionSettings = AttackOptionSettings()  # common to every recipe (a recipe's own win)
    # also score every trial on the ADA victim's adversarial examples of the same subset (static evaluation,
    # AMDA's Table 1), logged as static_robust_acc next to the targeted robust_acc
    static: StrictBool = False
    # keep the victim-independent work of each attacked example (sentence embeddings, part-of-speech tags) in the
    # search folder for the next trial's attack of it (distat.attacks.work_cache): a speed setting; a stored
    # embedding agrees with a recomputed one to float rounding (about 1e-7), as two uncached calls already do
    cache: StrictBool = True
    # texts per victim forward and per sentence-encoder forward: larger on a GPU. A speed setting, not part of the
    # threat model: sentence embeddings do not depend on it; the victim's padded batches do, in their last bits
    batch_size: StrictInt = Field(default=32, ge=1)

    @property
    def in_train_worker(self) -> bool:
        """Without actors, a trial's robust evaluation runs in its rank-0 Ray Train worker right after
        training: on the CPUs/GPU the trial already holds, with no actor to start and no model to ship. The
        static set (an ADA victim's attacks) keeps the evaluation in the trial, which may train a victim as a
        Ray task: not from inside a worker holding the trial's CPUs."""
        return self.actors == 0 and not self.static

    @property
    def attacks(self) -> list[RecipeSettings]:
        """The recipes in order, each with its options resolved over the common ones."""
        listed = self.recipes or (RecipeSettings(recipe=self.recipe or "textfooler"),)
        return [r.model_copy(update={"options": r.options.over(self.options)}) for r in listed]

    @property
    def names(self) -> list[str]:
        """Every robust-accuracy column of an evaluation: the recipes', then the static sets'."""
        return [r.key for r in self.attacks] + [s.name for s in self.static_sets]

    @property
    def recipe_names(self) -> list[str]:
        """The recipes, once each (what the attack resources must hold)."""
        return list(dict.fromkeys(r.recipe for r in self.attacks))

    @field_validator("recipe")
    @classmethod
    def _recipe(cls, value: str | None) -> str | None:
        if value is not None and value not in RECIPES:
            raise ValueError(f"unknown attack recipe {value!r} (choose from {', '.join(RECIPES)})")
        return value

    @field_validator("split")
    @classmethod
    def _dev(cls, value: str) -> str:
        if value != "dev":
            raise ValueError(f"the search's objectives are measured on the dev split, not {value!r} "
                             "(test is for the test stage: `distat evaluate`)")
        return value

    @field_validator("gpus_per_actor")
    @classmethod
    def _gpus(cls, value: float) -> float:
        return _whole_above_one(value)

    @model_validator(mode="after")
    def _names(self) -> AttackSettings:
        if self.recipe is not None and self.recipes:
            raise KeyedError(("recipes",), "give one recipe (recipe:) or a list (recipes:), not both")
        names = self.names
        for name in names:
            if names.count(name) > 1:
                raise KeyedError(("recipes",), f"two attacks are named {name!r}: give one of them a name: "
                                               "(the suffix of its metrics)")
        if self.objective != WORST_CASE and self.objective not in names:
            raise KeyedError(("objective",), f"{self.objective!r} is none of the attacks ({', '.join(names)}); "
                                             f"name one, or {WORST_CASE} for the worst case over all")
        return self


class TestStageSettings(Strict):
    """The test stage (``distat evaluate <search dir>``, or after the search with ``after_search: true``): the
    front's feasible trials, the best of each method and any ``trials`` named, re-evaluated on the test split
    with every attack of ``attack`` (or ``recipes`` / ``static_sets`` given here) on a large seeded subset,
    the same examples for every trial."""

    split: str = "test"
    n: StrictInt | None = Field(default=1000, ge=1)  # a cap on the attacked examples; null = the whole split
    seed: StrictInt | None = None  # the subset's seed; null = the search's
    recipes: tuple[RecipeSettings, ...] | None = None  # null = attack's list
    static_sets: tuple[StaticSetSettings, ...] | None = None  # null = attack's
    trials: tuple[str, ...] = ()  # trial ids evaluated besides the front
    # attack actors of the test stage (null = attack.actors): it runs when no trial trains, so it can use more
    actors: StrictInt | None = Field(default=None, ge=0)
    best_per_method: StrictBool = True  # also each method's best feasible trial (the report's rows)
    after_search: StrictBool = False  # run it when the search ends

    @field_validator("split")
    @classmethod
    def _not_dev(cls, value: str) -> str:
        if value in ("dev", "train"):
            raise ValueError(f"the test stage measures held-out data, not the {value} split")
        return value

    def attack(self, att: AttackSettings) -> AttackSettings:
        """The attack settings of the test stage: ``att`` with this stage's recipes and static sets (an objective
        naming an attack the stage drops becomes the worst case)."""
        data = att.model_dump()
        if self.recipes is not None:
            data.update(recipe=None, recipes=[r.model_dump() for r in self.recipes])
        if self.static_sets is not None:
            data["static_sets"] = [s.model_dump() for s in self.static_sets]
        if self.actors is not None:
            data["actors"] = self.actors
        names = [r.get("name") or r["recipe"] for r in data["recipes"]] or [data["recipe"] or "textfooler"]
        if data["objective"] not in [*names, *(s["name"] for s in data["static_sets"])]:
            data["objective"] = WORST_CASE
        return AttackSettings.model_validate(data)


class EarlyStopSettings(Strict):
    """``search.early_stop:`` of a search file: when trials are compared, how many are stopped, and the probe.

    The probe settings (``probe_n``, ``probe_query_budget``, ``probe_seed``) are read by the trial side, which
    attacks the probe subset at each rung and reports its robust accuracy; this module only compares what
    the trials report.
    """

    #: Epochs after which the trials are compared, strictly increasing (e.g. ``[1]`` or ``[1, 3]``).
    rungs: tuple[Annotated[StrictInt, Field(ge=1)], ...]
    #: The bottom fraction of a rung that is stopped: 1 - 1/η for a reduction factor η. The default, 2/3, is
    #: η = 3, MO-ASHA's (Schmucker et al., 2021; Syne Tune's ``MOASHA``) and ASHA's; 0.5 is halving (η = 2).
    stop_fraction: float = Field(default=2 / 3, gt=0.0, lt=1.0)
    #: A trial is judged only when at least this many trials (itself included) have reached its rung.
    min_compared: StrictInt = Field(default=2, ge=2)
    #: Examples of the seeded probe subset attacked at a rung.
    probe_n: StrictInt = Field(default=32, ge=1)
    #: Victim queries allowed per attacked probe example (None: the attack's own budget).
    probe_query_budget: StrictInt | None = Field(default=200, ge=1)
    #: Seed of the probe subset (the same examples for every trial of a search).
    probe_seed: StrictInt = Field(default=0, ge=0)
    #: false: probe and rank at every rung, never stop: measures how well the proxy's ranking agrees with the
    #: full evaluation's (printed with the front) before a search trusts it.
    stop: StrictBool = True

    @field_validator("rungs")
    @classmethod
    def _increasing(cls, rungs: tuple[int, ...]) -> tuple[int, ...]:
        if not rungs:
            raise ValueError("rungs must list at least one epoch")
        if any(b <= a for a, b in zip(rungs, rungs[1:], strict=False)):
            raise ValueError(f"rungs must be strictly increasing epochs, got {list(rungs)}")
        return rungs



class SearchSettings(Strict):
    """The Optuna side: how many trials, how many at once, the objectives and the clean floor."""

    num_samples: StrictInt = Field(default=4, ge=1)  # trials in total
    max_concurrent: StrictInt = Field(default=1, ge=1)  # trials running at once
    # both maximised: a clean score (accuracy; macro-F1 or balanced accuracy for imbalanced data) and robust_acc
    objectives: tuple[str, ...] = OBJECTIVES
    clean_acc_floor: Number | None = Field(default=None, ge=0, le=1)  # trials below it are infeasible
    # the floor as a margin over the dev split's majority-class rate (on a 13%-positive set, 0.87 is what
    # predicting "ham" always scores): clean_acc >= majority rate + this; exclusive with clean_acc_floor
    clean_acc_over_majority: Number | None = Field(default=None, ge=0, le=1)
    # parameter values (by name) that the first trials run, in order, before the sampler suggests anything:
    # a paper table's fixed rows, or known-good settings; the parameters a point leaves out are sampled
    points: tuple[dict[str, Any], ...] = ()
    # a previous search's folder: its finished trials that fit this space and threat model are prior observations
    # of this search's sampler (distat.search.warm_start); relative to the current directory
    warm_start: str | None = None
    # multi-objective early stopping at rungs of epochs on a cheap robust probe (distat.search.early_stop)
    early_stop: EarlyStopSettings | None = None

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        clean = [v for v in value if v in CLEAN_METRICS]
        if len(value) != 2 or "robust_acc" not in value or len(clean) != 1:
            raise ValueError(f"must be [<clean>, robust_acc] (both maximised; <clean> one of "
                             f"{', '.join(CLEAN_METRICS)}), got [{', '.join(value)}]")
        return value

    @model_validator(mode="after")
    def _one_floor(self) -> SearchSettings:
        if self.clean_acc_floor is not None and self.clean_acc_over_majority is not None:
            raise KeyedError(("clean_acc_over_majority",), "give clean_acc_floor or clean_acc_over_majority, not both")
        return self

    @property
    def clean_metric(self) -> str:
        """The clean objective: ``clean_acc``, ``macro_f1`` or ``balanced_acc``."""
        return next(v for v in self.objectives if v in CLEAN_METRICS)

    @property
    def modes(self) -> list[str]:
        return ["max"] * len(self.objectives)


class ResourceSettings(Strict):
    """Per trial: Ray Train workers (DDP across them) and what each one holds."""

    num_workers: StrictInt = Field(default=1, ge=1)
    use_gpu: StrictBool = False
    cpus_per_worker: Number = Field(default=1.0, ge=0)
    gpus_per_worker: Number | None = Field(default=None, ge=0)  # null: 1 with use_gpu, else 0

    @field_validator("gpus_per_worker")
    @classmethod
    def _gpus(cls, value: float | None) -> float | None:
        return None if value is None else _whole_above_one(value)

    @model_validator(mode="after")
    def _consistent(self) -> ResourceSettings:
        if self.gpus_per_worker is not None:
            if self.gpus_per_worker > 0 and not self.use_gpu:
                raise KeyedError(("gpus_per_worker",), "GPUs per worker need use_gpu: true")
            if self.gpus_per_worker == 0 and self.use_gpu:
                raise KeyedError(("gpus_per_worker",), "must be > 0 with use_gpu: true")
        if self.cpus_per_worker == 0 and not self.use_gpu:
            raise KeyedError(("cpus_per_worker",), "a worker without a GPU needs CPUs: must be > 0")
        return self

    @property
    def gpus(self) -> float:
        """GPUs per worker, with the default filled in."""
        if self.gpus_per_worker is not None:
            return self.gpus_per_worker
        return 1.0 if self.use_gpu else 0.0

    @property
    def resources_per_worker(self) -> dict[str, float]:
        """For ``ray.train.ScalingConfig(resources_per_worker=...)``."""
        out = {"CPU": self.cpus_per_worker}
        if self.gpus:
            out["GPU"] = self.gpus
        return out


def _whole_above_one(value: float) -> float:
    if value > 1 and value != int(value):
        raise ValueError(f"fractions of a GPU are only possible below 1, got {_fmt(value)}")
    return value


class SearchConfig(Strict):
    """A whole search, validated; ``trial`` stays the raw mapping that every trial config starts from."""

    name: str
    seed: StrictInt = 0  # Optuna's sampler and the attacked dev subset (each trial trains with trial.seed)
    trial: dict[str, Any] = Field(default_factory=dict)
    attack: AttackSettings = AttackSettings()
    evaluate: TestStageSettings = TestStageSettings()  # the test stage: `distat evaluate <search dir>`
    search: SearchSettings = SearchSettings()
    resources: ResourceSettings = ResourceSettings()
    params: dict[str, ParamSpec]

    @model_validator(mode="before")
    @classmethod
    def _absolute_paths(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if isinstance(data.get("trial"), dict):
            trial = copy.deepcopy(data["trial"])
            for target in _PATH_TARGETS:
                section, key = target.split(".")
                node = trial.get(section)
                if isinstance(node, dict) and key in node:
                    node[key] = _absolute(target, node[key])
            data["trial"] = trial
        if isinstance(data.get("params"), dict):
            params = dict(data["params"])
            for name, spec in params.items():
                target = ALIASES.get(name, name)
                if target in _PATH_TARGETS and isinstance(spec, dict) and isinstance(spec.get("choice"), list):
                    params[name] = {**spec, "choice": [_absolute(target, v) for v in spec["choice"]]}
            data["params"] = params
        return data

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME_RE.fullmatch(value):
            raise ValueError(f"{value!r}: use letters, digits, '_', '.', '-' (not starting with '.' or '-')")
        return value

    @field_validator("trial")
    @classmethod
    def _trial(cls, trial: dict[str, Any]) -> dict[str, Any]:
        if "output_dir" in trial:
            raise KeyedError(("output_dir",), "set by the search (one folder per trial): remove it")
        fitted = {**trial, "output_dir": _PLACEHOLDER_DIR}
        if isinstance(trial.get("method"), dict):  # knobs for other methods of the search: see _method_knobs
            fitted["method"] = _fit_method(trial["method"])
        try:
            cfg = TrialConfig.model_validate(fitted)
        except ValidationError as e:
            loc, msg = first_problem(e, TrialConfig, _HIDDEN)
            raise KeyedError(loc, msg) from None
        for target in _PATH_TARGETS:
            problem = _path_problem(target, _get_dotted(cfg, target))
            if problem:
                raise KeyedError(tuple(target.split(".")), problem)
        return trial

    @field_validator("params")
    @classmethod
    def _params(cls, params: dict[str, ParamSpec]) -> dict[str, ParamSpec]:
        if not params:
            raise ValueError("give at least one searched parameter")
        names = list(params)
        targets: dict[str, str] = {}
        for i, (name, spec) in enumerate(params.items()):
            if not name or "/" in name:
                raise KeyedError((name,), "parameter names must be non-empty and without '/'")
            try:
                target = param_target(name)
            except ValueError as e:
                raise KeyedError((name,), str(e)) from None
            if target in targets:
                raise KeyedError((name,), f"sets {target}, like {targets[target]}")
            targets[target] = name
            kinds = _range_kinds(target)
            if spec.kind != "choice" and spec.kind not in kinds:
                hint = "use int: [low, high] or choice: [...]" if kinds else "use choice: [...]"
                what = "whole numbers" if kinds else "no numbers"
                raise KeyedError((name, spec.kind), f"{target} takes {what}: {hint}")
            for dep, values in (spec.when or {}).items():
                if dep not in names[:i]:
                    where = "declared after it" if dep in names else "not a searched parameter"
                    raise KeyedError((name, "when", dep), f"a condition needs a categorical parameter declared "
                                                          f"before this one; {dep} is {where}")
                dep_spec = params[dep]
                if dep_spec.kind != "choice":
                    raise KeyedError((name, "when", dep), f"{dep} is not categorical ({dep_spec.kind}); "
                                                          "conditions need a choice parameter")
                for j, value in enumerate(values):
                    if value not in (dep_spec.choice or ()):
                        raise KeyedError((name, "when", dep, j), f"{dep} cannot be {_fmt(value)} (its choices: "
                                                                 f"{_fmt_list(dep_spec.choice or ())})")
        return params

    @model_validator(mode="after")
    def _whole(self) -> SearchConfig:
        self._method_knobs()
        base = _build({}, self.trial, _PLACEHOLDER_DIR)
        if base.model.device == "cuda" and not self.resources.use_gpu:
            raise KeyedError(("trial", "model", "device"), "cuda needs resources.use_gpu: true")
        if base.data.max_dev_examples is not None and self.attack.n > base.data.max_dev_examples:
            raise KeyedError(("attack", "n"), f"{self.attack.n} examples to attack but the dev split is cut to "
                                              f"{base.data.max_dev_examples} (trial.data.max_dev_examples)")
        # Every choice and range end, applied to the base trial (with the conditions that enable it).
        for name, spec in self.params.items():
            target = param_target(name)
            enabling = self._enabling(name)
            for key, value in spec.points():
                try:
                    _build({**enabling, name: value}, self.trial, _PLACEHOLDER_DIR)
                except ValidationError as e:
                    loc, msg = first_problem(e, TrialConfig, _HIDDEN)
                    raise KeyedError(("params", name, *key), f"{_fmt(value)} makes an invalid trial: "
                                                             f"{'.'.join(loc)}: {msg}") from None
                problem = _path_problem(target, value)
                if problem:
                    raise KeyedError(("params", name, *key), problem)
        self._check_points()
        self._check_rungs(base.train.epochs)
        return self

    def _check_rungs(self, base_epochs: int) -> None:
        """Every early-stopping rung comes before a trial's last epoch (at the last one there is nothing left to
        save), whatever epochs a searched ``epochs`` gives."""
        es = self.search.early_stop
        if es is None:
            return
        epochs = [base_epochs]
        for name, spec in self.params.items():
            if param_target(name) == "train.epochs":
                epochs += [int(v) for _, v in spec.points()]
        if es.rungs[-1] >= min(epochs):
            raise KeyedError(("search", "early_stop", "rungs"),
                             f"rung {es.rungs[-1]} is not before the last epoch of every trial (epochs "
                             f"{min(epochs)}): a rung must leave epochs to save")

    def _check_points(self) -> None:
        """Each of ``search.points`` names only parameters of the space, with values their distributions can
        give, and makes a valid trial; there are no more points than trials."""
        points = self.search.points
        if len(points) > self.search.num_samples:
            raise KeyedError(("search", "points"), f"{len(points)} points but num_samples is "
                                                   f"{self.search.num_samples}: the last ones would never run")
        for i, point in enumerate(points):
            for name, value in point.items():
                spec = self.params.get(name)
                if spec is None:
                    raise KeyedError(("search", "points", i, name), "not a parameter of this search (params: "
                                                                    f"{', '.join(self.params)})")
                if not spec.admits(value):
                    raise KeyedError(("search", "points", i, name), f"{_fmt(value)} is not a value of "
                                                                    f"{spec.describe()}")
                if not spec.applies(point):
                    condition = "; ".join(f"{dep} in {_fmt_list(vals)}" for dep, vals in (spec.when or {}).items())
                    raise KeyedError(("search", "points", i, name), f"set, but its condition ({condition}) does "
                                                                    "not hold in this point")
            try:
                _build(dict(point), self.trial, _PLACEHOLDER_DIR)
            except ValidationError as e:
                loc, msg = first_problem(e, TrialConfig, _HIDDEN)
                raise KeyedError(("search", "points", i), f"makes an invalid trial: {'.'.join(loc)}: {msg}") from None

    def _method_knobs(self) -> None:
        """Every method knob must exist for each method it can be applied with.

        A searched knob (``adv_steps``) for every method a trial may run when the knob is sampled (its
        ``when`` conditions, followed through the parameters they name, and the ``method`` choices); a knob
        of the base trial for its own method, or, when the search chooses the method, for at least one of
        the methods the search can run (it then applies to those that have it).
        """
        raw = self.trial.get("method") or {}
        base_label = methods.label_of(raw)
        base_cls = methods.settings_class(base_label) if base_label else None
        if base_cls is None:  # the trial's own validation has reported it
            return
        method_param = self._method_param()
        searched = self.params[method_param] if method_param else None
        labels = _labels([base_label, *(searched.choice or () if searched is not None else ())])
        for knob in raw:
            if knob in base_cls.model_fields or knob in ("name", "base"):
                continue
            if searched is None:
                allowed = ", ".join(base_cls.model_fields)
                raise KeyedError(("trial", "method", knob),
                                 f"unknown key for method {base_label!r} (allowed: {allowed})")
            if not any(knob in (_method_fields(label) or ()) for label in labels):
                raise KeyedError(("trial", "method", knob),
                                 f"unknown key for every method this search runs ({', '.join(labels)})")
        for name in self.params:
            target = param_target(name)
            if not target.startswith("method.") or target == "method.name":
                continue
            knob = target.removeprefix("method.")
            for label in self._methods_for(name, base_label):
                fields = _method_fields(label)
                if fields is not None and knob not in fields:
                    having = [m for m in labels if knob in (_method_fields(m) or ())]
                    hint = (f": search it only where it exists, e.g. when: {{method: [{', '.join(having)}]}}"
                            if having and searched is not None else "")
                    raise KeyedError(("params", name), f"method {label!r} has no setting {knob}{hint}")

    def _method_param(self) -> str | None:
        """The searched parameter that chooses the method (``method``), if any."""
        return next((n for n in self.params if param_target(n) == "method.name"), None)

    def _methods_for(self, name: str, base_label: str | None) -> list[str]:
        """The methods (labels) a trial may run when parameter ``name`` is sampled: those its conditions
        allow, followed through the parameters they name; else the method choices (and the base trial's
        method when the choice itself is conditional); else the base trial's."""
        method_param = self._method_param()
        allowed: list[Any] | None = None
        stack, seen = [name], {name}
        while stack:
            for dep, values in (self.params[stack.pop()].when or {}).items():
                if dep == method_param:
                    allowed = list(values) if allowed is None else [v for v in allowed if v in values]
                elif dep not in seen:
                    seen.add(dep)
                    stack.append(dep)
        if allowed is None and method_param is not None:
            spec = self.params[method_param]
            allowed = [*(spec.choice or ()), *([base_label] if spec.when else [])]
        return _labels([base_label] if allowed is None else allowed)

    def _enabling(self, name: str) -> dict[str, Any]:
        """Values of the parameters that ``name``'s condition (transitively) needs: the first allowed."""
        out: dict[str, Any] = {}
        stack = [name]
        while stack:
            for dep, values in (self.params[stack.pop()].when or {}).items():
                if dep not in out:
                    out[dep] = values[0]
                    stack.append(dep)
        return out

    def base_trial(self, output_dir: str = "runs/search") -> TrialConfig:
        """The trial config before any searched parameter is applied."""
        return apply_params(self, {}, output_dir)


# --------------------------------------------------------------------------------------------------
# Paths


def _absolute(target: str, value: Any) -> Any:
    if not isinstance(value, str) or not value.strip() or not _is_local(target, value):
        return value
    return os.path.abspath(os.path.expanduser(value))


def _is_local(target: str, value: Any) -> bool:
    if not isinstance(value, str):
        return False
    if target == "data.path":
        return not value.startswith(_REMOTE_DATA)
    return value != "default"


def _path_problem(target: str, value: Any) -> str | None:
    if target not in _PATH_TARGETS or not _is_local(target, value):
        return None
    path = Path(value).expanduser()
    if target == "data.path":
        if path.is_file():
            return f"{value} is a file: give its folder ({path.parent})"
        if not path.is_dir():
            return f"dataset folder {value} does not exist (relative paths are resolved against the current " \
                   "directory; builtin:<name> and hf:<name> are not paths)"
    elif not path.is_dir():
        return f"backbone folder {value} does not exist (give a local model folder or 'default')"
    return None


def _get_dotted(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


# --------------------------------------------------------------------------------------------------
# Errors


# --------------------------------------------------------------------------------------------------
# API


def load_search_config(path: str | os.PathLike[str]) -> SearchConfig:
    """Read and validate a search YAML; any problem is a one-line ConfigError naming file and key."""
    return parse_search_config(read_yaml(path), str(path))


def parse_search_config(data: dict[str, Any], source: str = "<search>") -> SearchConfig:
    """Validate an already parsed search mapping (``source`` names it in errors)."""
    try:
        return SearchConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source, SearchConfig)) from None


def param_names(cfg: SearchConfig) -> list[str]:
    """The searched parameters, in the order they are suggested."""
    return list(cfg.params)


def sampled_params(cfg: SearchConfig, config: dict[str, Any]) -> dict[str, Any]:
    """The searched parameters' values in a Tune trial's ``config`` (what :func:`apply_params` takes), in
    suggestion order; any other key of it is left out."""
    return {k: config[k] for k in param_names(cfg) if k in config}


def define_by_run(cfg: SearchConfig) -> Callable[[optuna.Trial], dict[str, Any]]:
    """An Optuna define-by-run function for ``OptunaSearch(space=...)``.

    It suggests every parameter in declaration order, skipping a conditional one whose condition does
    not hold (so it is absent from the trial's params). Ray captures the suggested values itself; the
    returned mapping (constants merged into the Tune config) is empty.
    """
    specs = tuple(cfg.params.items())

    def space(trial: optuna.Trial) -> dict[str, Any]:
        chosen: dict[str, Any] = {}
        for name, spec in specs:
            if spec.applies(chosen):
                chosen[name] = spec.suggest(trial, name)
        return {}

    return space


def apply_params(cfg: SearchConfig, params: dict[str, Any], output_dir: str) -> TrialConfig:
    """The full config of one trial: the base ``trial`` with the sampled ``params`` applied.

    ``params`` may be any subset of the search's parameters (a missing one keeps the base value); an
    unknown name is an error. ``method: adaptive_pgd`` goes through the method settings' shorthand; changing
    the method keeps those of the base's method knobs that the new method has. ``beta: auto`` is None (the
    method's default).
    """
    unknown = [name for name in params if name not in cfg.params]
    if unknown:
        raise ConfigError(f"search {cfg.name}: unknown parameter(s) {', '.join(map(str, unknown))} "
                          f"(searched: {', '.join(cfg.params)})")
    ordered = {name: params[name] for name in cfg.params if name in params}
    base = cfg.trial
    largest = _largest_aug_ratio(cfg)
    if largest is not None and (base.get("augment") or {}).get("pool_ratio") is None:
        # one ADA pool for the whole search: generated for the largest ratio any trial can ask for
        base = copy.deepcopy(base)
        set_dotted(base, "augment.pool_ratio", largest)
    try:
        return _build(ordered, base, output_dir)
    except ValidationError as e:
        loc, msg = first_problem(e, TrialConfig, _HIDDEN)
        raise ConfigError(f"search {cfg.name}: params {ordered}: {'.'.join(loc)}: {msg}") from None


def _largest_aug_ratio(cfg: SearchConfig) -> float | None:
    for name, spec in cfg.params.items():
        if param_target(name) == "augment.ratio":
            return float(max(v for _, v in spec.points()))
    return None


def _build(values: dict[str, Any], base: dict[str, Any], output_dir: str) -> TrialConfig:
    data = copy.deepcopy(base)
    targets = {name: param_target(name) for name in values}
    if isinstance(data.get("method"), dict) or "method.name" in targets.values():
        method = dict(data.get("method") or {})
        for name, target in targets.items():
            if target == "method.name":  # the name decides the base: drop the base trial's, keep the knobs
                method.pop("base", None)
                method["name"] = values[name]
        data["method"] = _fit_method(method)  # before the searched knobs: those are checked at load time
    for name, value in values.items():
        target = targets[name]
        if target in AUTO_IS_NONE and value == "auto":
            value = None
        if target != "method.name":
            set_dotted(data, target, value)
    data["output_dir"] = output_dir
    return TrialConfig.model_validate(data)


#: The widest 95% interval (half-width) on robust accuracy a search's summary accepts without a warning: AT methods
#: differ by a few points of robust accuracy, so an interval of ±0.05 already blurs differences under 0.1.
RESOLVE_HALF_WIDTH = 0.05


def interval_half_width(n: int) -> float:
    """Half the width of the Wilson 95% interval of an accuracy of 0.5 (its widest) over ``n`` examples."""
    from distat.attacks.metrics import wilson_interval

    lo, hi = wilson_interval(n // 2, n)
    return (hi - lo) / 2


def noise_lines(n: int, what: str = "attacked examples") -> list[str]:
    """The summary's word on the precision ``n`` examples give an accuracy: the half-width of its 95% interval
    and, when that is wider than :data:`RESOLVE_HALF_WIDTH`, a warning with the differences it cannot resolve
    (two accuracies whose intervals overlap are "within noise" on the front: closer than about twice the
    half-width) and the smallest ``n`` that would do."""
    half = interval_half_width(n)
    lines = [f"precision: an accuracy over n = {n} {what} has a 95% interval of about ±{half:.3f} (Wilson, at 0.5)"]
    if half > RESOLVE_HALF_WIDTH:
        lo, hi = n, 1 << 20
        while lo < hi:  # the smallest n giving ±RESOLVE_HALF_WIDTH (the half-width falls as n grows)
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if interval_half_width(mid) <= RESOLVE_HALF_WIDTH else (mid + 1, hi)
        lines.append(f"warning: ±{half:.3f} is wider than ±{RESOLVE_HALF_WIDTH:g}: robust accuracies closer than "
                     f"about {2 * half:.2f} cannot be told apart; attack.n >= {lo} gives ±{RESOLVE_HALF_WIDTH:g}")
    return lines


@functools.lru_cache(maxsize=16)
def _majority_rate(trial_json: str) -> float:
    from distat.scores import score_predictions
    from distat.training import load_splits

    cfg = TrialConfig.model_validate_json(trial_json)
    _, _, dev = load_splits(cfg)
    labels = list(dev.labels)
    return score_predictions(labels, labels, max(labels, default=0) + 1).majority_rate


def majority_rate(cfg: SearchConfig) -> float:
    """The majority-class rate of the dev rows every trial is scored on (what always predicting the most
    frequent class scores)."""
    return _majority_rate(cfg.base_trial().model_dump_json())


def clean_floor(cfg: SearchConfig) -> float | None:
    """The clean-accuracy floor in force: ``search.clean_acc_floor``, or the dev split's majority-class rate plus
    ``search.clean_acc_over_majority`` (capped at 1); None without either."""
    s = cfg.search
    if s.clean_acc_over_majority is None:
        return s.clean_acc_floor
    return min(1.0, majority_rate(cfg) + s.clean_acc_over_majority)


def _floor_text(cfg: SearchConfig) -> str:
    s = cfg.search
    if s.clean_acc_over_majority is not None:
        rate = majority_rate(cfg)
        return (f", infeasible below clean_acc {_fmt(round(clean_floor(cfg) or 0.0, 4))} (the dev majority-class "
                f"rate {rate:.3f} + {_fmt(s.clean_acc_over_majority)})")
    if s.clean_acc_floor is not None:
        return f", infeasible below clean_acc {_fmt(s.clean_acc_floor)}"
    return ""


def _attack_list(a: AttackSettings) -> str:
    """``textfooler, bae + static advglue; objective: the worst case`` (one attack: its name)."""
    names = [r.key if r.key == r.recipe else f"{r.key} ({r.recipe})" for r in a.attacks]
    text = ", ".join(names) + ("".join(f" + static {s.name}" for s in a.static_sets))
    if len(a.names) > 1:
        text += "; objective: " + ("the worst case (min)" if a.objective == WORST_CASE else a.objective)
    return text


def _early_stop_text(es: EarlyStopSettings) -> str:
    budget = f", {es.probe_query_budget} queries each" if es.probe_query_budget else ""
    action = (f"the bottom {es.stop_fraction:.3g} of each rung stopped (non-dominated sorting, below the clean "
              "floor last, crowding distance)"
              if es.stop else "ranked only, never stopped (early_stop.stop: false)")
    return (f"early stopping: at epoch(s) {', '.join(map(str, es.rungs))}, a probe of {es.probe_n} dev examples"
            f"{budget}; {action}")


def describe(cfg: SearchConfig) -> str:
    """A short human summary of a search, several lines."""
    t = cfg.base_trial()
    s, a, r = cfg.search, cfg.attack, cfg.resources
    floor = _floor_text(cfg)
    limits = [f"{k} {v}" for k, v in (("train ≤", t.data.max_train_examples), ("dev ≤", t.data.max_dev_examples))
              if v is not None]
    dev = describe_dev(t.data)  # a carved or stand-in dev split, said before the search starts
    data = ", ".join([*limits, f"max_length {t.data.max_length}", *([dev] if dev else [])])
    if a.actors:
        gpu = f" + {_fmt(a.gpus_per_actor)} GPU" if a.gpus_per_actor else ""
        where = f"{a.actors} actor(s) × {_fmt(a.cpus_per_actor)} CPU{gpu}"
    elif a.in_train_worker:
        where = "in each trial's rank-0 Train worker, after training"
    else:
        where = "in each trial, after training"
    gpu = f" + {_fmt(r.gpus)} GPU" if r.use_gpu else ", no GPU"
    width = max(len(n) for n in cfg.params)
    return "\n".join([
        f"search {cfg.name}: {s.num_samples} trial(s), {s.max_concurrent} at a time, seed {cfg.seed}; "
        f"maximise {' and '.join(s.objectives)}{floor}",
        f"trial: {t.method.label} on {t.data.path} ({data}), backbone {t.model.backbone}, "
        f"{t.train.epochs} epoch(s), batch {t.train.batch_size}, lr {_fmt(t.train.lr)}, seed {t.seed}",
        f"attack: {_attack_list(a)} on {a.n} {a.split} examples{' (label-balanced)' if a.stratify else ''}, {where}"
        + (" (+ static evaluation on the ADA victim's examples)" if a.static else ""),
        *noise_lines(a.n),
        *([f"ADA: {t.augment.recipe} examples of the training set, one pool for ratio "
           f"{_fmt(t.augment.effective_pool_ratio)} shared by all trials"] if t.augment else []),
        *([_early_stop_text(s.early_stop)] if s.early_stop else []),
        f"resources per trial: {r.num_workers} worker(s) × {_fmt(r.cpus_per_worker)} CPU{gpu}",
        "params:",
        *(f"  {name:<{width}}  {spec.describe()}" for name, spec in cfg.params.items()),
        *([f"first {len(s.points)} trial(s) fixed (search.points): "
           + "; ".join(", ".join(f"{k} {_fmt(v)}" for k, v in p.items()) for p in s.points)] if s.points else []),
    ])
