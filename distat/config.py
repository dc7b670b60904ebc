"""Validated configuration: YAML in, pydantic objects out, one-line errors.

Defaults live here and beside each AT method: a method's knobs are its settings class in its own module
(:class:`distat.methods.pgd.PGDSettings`...), and the ``method`` section is their union
(:data:`distat.methods.MethodSettings`, chosen by ``name``). Every model forbids unknown keys, so a typo, or
a knob the named method does not have, is an error that names the key rather than a silently ignored
setting.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, StrictInt, ValidationError, field_validator

from distat.data import CARVED, Carve, Dataset, list_splits, load_dataset
from distat.errors import ConfigError, DataError, format_validation_error
from distat.methods import MethodSettings, StandardSettings
from distat.settings import Strict


class DataConfig(Strict):
    """Where the labelled splits come from and how they are tokenised.

    Split names resolve in one place, :func:`resolve_split` (training, ADA and the attack side all use it):
    ``dev_split: dev`` (the default) is the dataset's ``dev`` split, else its ``validation`` split, else a
    dev split carved out of train (``carved``: ``carve_dev`` of the rows, stratified by label, drawn with
    ``carve_seed``, removed from train), so a dataset shipped as train + test is tuned on training rows and
    its test split is left to a test stage. ``dev_split: carved`` always carves; any other name must exist.
    The effective names (:func:`resolve_data`) are what a trial records.
    """

    path: str = "builtin:rotten_tomatoes"
    train_split: str = "train"
    dev_split: str = "dev"
    test_split: str | None = None  # None: "test" when the dataset has one
    # The carved dev split's size: a fraction of train (at most carve_dev_max rows) or a row count. 10% is the
    # usual hold-out share; the cap of 1000 rows keeps a large train set's rows for training while still
    # measuring clean accuracy within about ±3 points (Wilson 95%) and leaving ample rows to attack.
    carve_dev: StrictInt | float = 0.1
    carve_dev_max: int | None = Field(default=1000, ge=1)
    # A data seed, not the trial's: every trial of a search (even one searching `seed`) tunes on the same rows.
    carve_seed: int = 13
    text_fields: tuple[str, ...] | None = None
    max_train_examples: int | None = Field(default=None, gt=0)
    max_dev_examples: int | None = Field(default=None, gt=0)
    max_length: int = Field(default=128, ge=8, le=4096)
    # extra training rows appended after sampling (JSONL: text_a, text_b, label), e.g. the adversarial
    # examples ADA picked for this trial; they are not counted by max_train_examples
    augment_file: str | None = None

    @field_validator("carve_dev", mode="before")
    @classmethod
    def _carve_size(cls, v: Any) -> Any:
        if isinstance(v, bool):
            raise ValueError("expected a fraction of train in (0, 1) or a row count")
        if isinstance(v, float) and not 0 < v < 1:
            raise ValueError(f"{v} is neither a fraction of train in (0, 1) nor a whole row count")
        if isinstance(v, int) and v < 1:
            raise ValueError(f"{v} rows: a carved dev split needs at least 1 row")
        return v

    def carve(self) -> Carve:
        """How this config carves a dev split out of train (used when the dev split resolves to ``carved``)."""
        cap = self.carve_dev_max if isinstance(self.carve_dev, float) else None
        return Carve(source=self.train_split, size=self.carve_dev, seed=self.carve_seed, cap=cap)


class ModelConfig(Strict):
    """The backbone: ``default`` is the packaged all-MiniLM-L6-v2 BERT; otherwise a local folder."""

    backbone: str = "default"
    trust_remote_code: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    bf16: bool = True  # bf16 autocast; only ever used on CUDA


class TrainConfig(Strict):
    epochs: int = Field(default=1, ge=1)
    batch_size: int = Field(default=16, ge=1)
    eval_batch_size: int = Field(default=64, ge=1)
    lr: float = Field(default=2e-5, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1)
    max_grad_norm: float = Field(default=1.0, ge=0)  # 0 = no clipping
    keep_checkpoints: int = Field(default=2, ge=1)
    # batches of similar lengths (less padding: on SST-2 sentences about half the tokens of a shuffled batch are
    # padding). The epoch is still a seeded shuffle: windows of 50 batches are sorted by length, cut into batches
    # and the batches shuffled, as transformers' group_by_length does. It changes which examples share a batch,
    # so a trial with it is not bit-identical to one without (it is saved in every checkpoint's config)
    group_by_length: bool = False


class VictimConfig(Strict):
    """The model ADA attacks: a given checkpoint, or a standard fine-tune of the trial's backbone and data."""

    checkpoint: str | None = None
    epochs: int = Field(default=1, ge=1)
    lr: float | None = Field(default=None, gt=0)  # None = the trial's train.lr


class AugmentConfig(Strict):
    """ADA: adversarial examples of the training set (Si et al., AMDA), generated once per pool.

    A pool attacks the first ⌈pool_ratio·N⌉ examples of a seeded permutation of the N training rows; a trial
    with ``ratio`` r trains on the original rows plus the successful adversarial examples among the first
    ⌈r·N⌉, so pools of every ratio are nested and one pool serves all trials of a search.
    """

    ratio: float = Field(default=0.5, ge=0, le=1)  # fraction of the training set attacked for this trial
    pool_ratio: float | None = Field(default=None, gt=0, le=1)  # None = ratio; a search sets its largest
    recipe: Literal["pwws", "textfooler"] = "pwws"
    victim: VictimConfig = VictimConfig()
    max_modify_rate: float | None = Field(default=0.3, gt=0, le=1)
    query_budget: int | None = Field(default=None, ge=1)
    max_candidates: int | None = Field(default=None, ge=1)
    actors: int = Field(default=1, ge=0)  # attack actors when generating (0 = in the generating process)
    gpus_per_actor: float = Field(default=0.0, ge=0)
    cache: bool = True  # False: generate into the trial's own folder (the benchmark's "fresh" baseline)
    # iterative ADA: after each epoch but the last, attack this many training rows (a new seeded draw each
    # epoch) against the model being trained and add the successful examples; 0 = one-shot ADA only
    iterative_n: int = Field(default=0, ge=0)

    @property
    def effective_pool_ratio(self) -> float:
        return max(self.pool_ratio or 0.0, self.ratio)


class TrialConfig(Strict):
    """Everything one training run needs; a trial is reproducible from it."""

    seed: int = 13
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    method: MethodSettings = StandardSettings()  # one AT method's settings, chosen by its ``name``
    train: TrainConfig = TrainConfig()
    augment: AugmentConfig | None = None  # ADA (adversarial data augmentation); None = off
    output_dir: str = "runs/train"

    @field_validator("output_dir")
    @classmethod
    def _nonempty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        if "://" in v:
            raise ValueError(f"{v!r} is a URI: checkpoints go to a filesystem path (a shared mount on a cluster)")
        return v


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse a YAML mapping safely; any problem is a ConfigError naming the file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: cannot read: {e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{p}:{where}: invalid YAML: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of settings at the top level, got {type(data).__name__}")
    return data


def load_trial_config(path: str | os.PathLike[str], overrides: dict[str, Any] | None = None) -> TrialConfig:
    """Load and validate a trial YAML (``distat train``); ``overrides`` are dotted keys → values."""
    data = read_yaml(path)
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    return parse_trial_config(data, str(path))


def parse_trial_config(data: dict[str, Any], source: str = "<config>") -> TrialConfig:
    try:
        return TrialConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source, TrialConfig)) from None


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """``set_dotted(d, "method.adv_lr", 0.1)`` sets ``d["method"]["adv_lr"]``, creating mappings."""
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key}: {part} is not a mapping")
        node = child
    node[parts[-1]] = value


# --------------------------------------------------------------------------------------------------
# Split names: the one place a logical split (train, dev, test) becomes a split of the data


LOGICAL_SPLITS = ("train", "dev", "test")
_DEV_FALLBACKS = ("dev", "validation")  # what `dev_split: dev` may find, in this order, before carving


def _missing(dcfg: DataConfig, name: str, key: str, names: Sequence[str]) -> DataError:
    return DataError(f"{dcfg.path} has no split {name!r} (data.{key}); its splits: {', '.join(names) or 'none'}")


def _resolve(dcfg: DataConfig, logical: str, names: Sequence[str]) -> str:
    if logical == "train":
        if dcfg.train_split not in names:
            raise _missing(dcfg, dcfg.train_split, "train_split", names)
        return dcfg.train_split
    if logical == "dev":
        dev = dcfg.dev_split
        if dev not in names and dev != CARVED:
            if dev != "dev":
                raise _missing(dcfg, dev, "dev_split", names)
            dev = next((n for n in _DEV_FALLBACKS if n in names), CARVED)
        if dev == CARVED and dcfg.train_split not in names:
            raise DataError(f"{dcfg.path} has no dev split and no split {dcfg.train_split!r} (data.train_split) to "
                            f"carve one from; its splits: {', '.join(names) or 'none'}")
        if dev == dcfg.train_split:
            raise DataError(f"data.dev_split and data.train_split are both {dev!r}: tuning on the training rows")
        return dev
    if logical == "test":
        test = dcfg.test_split or "test"
        if test not in names:
            raise _missing(dcfg, test, "test_split", names)
        return test
    raise ValueError(f"not a logical split: {logical!r}")


def resolve_split(dcfg: DataConfig, name: str, names: Sequence[str] | None = None) -> str:
    """The split of ``dcfg``'s data that ``name`` means: a logical split (``train``, ``dev``, ``test``) as the
    config maps it (``dev_split: test`` makes ``dev`` the test split; a dataset without a dev split gets
    ``carved``), any other name as is if the data has it. ``names``: the data's splits, when already listed.
    An unresolvable name is a one-line :class:`DataError` naming the data and the splits it has."""
    names = list_splits(dcfg.path) if names is None else list(names)
    if name in LOGICAL_SPLITS:
        return _resolve(dcfg, name, names)
    if name in names or (name == CARVED and _resolve(dcfg, "dev", names) == CARVED):
        return name
    raise DataError(f"{dcfg.path} has no split {name!r}; its splits: {', '.join(names) or 'none'}")


def resolve_data(dcfg: DataConfig, names: Sequence[str] | None = None) -> DataConfig:
    """The effective data settings: ``train_split`` and ``dev_split`` as the data has them (``dev_split``
    ``carved`` when carved), ``test_split`` set when the data has one. Idempotent; what a trial records, so
    its config says which rows it tuned on. Checks train and dev up front (one-line :class:`DataError`)."""
    names = list_splits(dcfg.path) if names is None else list(names)
    update = {"train_split": _resolve(dcfg, "train", names), "dev_split": _resolve(dcfg, "dev", names)}
    if dcfg.test_split is not None or "test" in names:
        update["test_split"] = _resolve(dcfg, "test", names)
    return dcfg.model_copy(update=update)


def load_data(dcfg: DataConfig, splits: Sequence[str] = ("train", "dev")) -> Dataset:
    """The dataset holding ``splits`` (logical or literal names, see :func:`resolve_split`); read them with
    ``ds.split(resolve_split(dcfg, name))``. When the dev split is carved, train is loaded without the carved
    rows whether or not dev is asked for, and the fingerprint says so."""
    names = list_splits(dcfg.path)
    actual = [resolve_split(dcfg, s, names) for s in splits]
    try:
        carved = _resolve(dcfg, "dev", names) == CARVED
    except DataError:  # a dev split that cannot resolve matters only when asked for (raised above then)
        carved = False
    carve = dcfg.carve() if carved and {dcfg.train_split, CARVED} & set(actual) else None
    return load_dataset(dcfg.path, actual, text_fields=dcfg.text_fields, carve=carve)


def describe_dev(dcfg: DataConfig) -> str:
    """For a summary line: where the dev rows come from when that is not the data's own ``dev`` split (how
    it is carved, or which split stands in); empty otherwise, and when the data cannot be listed (the
    up-front check reports that)."""
    try:
        dev = _resolve(dcfg, "dev", list_splits(dcfg.path))
    except DataError:
        return ""
    if dev == CARVED:
        return f"dev {dcfg.carve().describe()}"
    if dev == "dev":
        return ""
    return f"dev = split {dev!r}" + (" (the test split: tuning on it biases test numbers)" if dev == "test" else "")
