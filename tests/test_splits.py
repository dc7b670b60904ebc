"""Split names as users' datasets have them: a dev split carved out of train when there is none, one place that
maps the logical train/dev/test to a dataset's splits (training and the attack side alike), checked up front."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from distat.config import DataConfig, describe_dev, load_data, resolve_data, resolve_split
from distat.data import CARVED, load_dataset, stratified_carve
from distat.errors import DataError

from helpers import shared_data_dir


def _sst2_folder(tmp_path: Path, splits: dict[str, tuple[str, int]], name: str = "data") -> Path:
    """A folder of ``<split>.tsv`` files, each the first ``n`` rows of a shared SST-2 split (``{split: (source,
    n)}``), plus SST-2's dataset.json; the shared data stays untouched."""
    src = shared_data_dir() / "sst2"
    folder = tmp_path / name
    folder.mkdir()
    for split, (source, n) in splits.items():
        lines = (src / f"{source}.tsv").read_text(encoding="utf-8").splitlines()
        (folder / f"{split}.tsv").write_text("\n".join(lines[: n + 1]) + "\n", encoding="utf-8")
    (folder / "dataset.json").write_text((src / "dataset.json").read_text(encoding="utf-8"), encoding="utf-8")
    return folder


def _rows(split) -> list[tuple[str, int]]:
    return list(zip(split.text_a, split.labels, strict=True))


# --------------------------------------------------------------------------------------------------
# Carving


@pytest.mark.parametrize(("counts", "k"), [({0: 70, 1: 30}, 10), ({0: 5, 1: 11, 2: 17}, 7), ({0: 1, 1: 99}, 50)])
def test_stratified_carve_keeps_label_shares_within_one_row(counts: dict[int, int], k: int) -> None:
    labels = [label for label, c in counts.items() for _ in range(c)]
    labels = [labels[(i * 37) % len(labels)] for i in range(len(labels))]  # interleaved, not sorted
    kept, carved = stratified_carve(labels, k, seed=4)
    assert len(carved) == k and len(kept) == len(labels) - k
    assert sorted(kept + carved) == list(range(len(labels)))  # disjoint, nothing lost
    assert kept == sorted(kept) and carved == sorted(carved)
    got = Counter(labels[i] for i in carved)
    for label, c in counts.items():
        assert abs(got[label] - k * c / len(labels)) < 1, (label, got)


def test_stratified_carve_is_seeded() -> None:
    labels = [i % 3 for i in range(300)]
    assert stratified_carve(labels, 30, seed=1) == stratified_carve(labels, 30, seed=1)
    assert stratified_carve(labels, 30, seed=1)[1] != stratified_carve(labels, 30, seed=2)[1]


def test_train_and_test_folder_gets_a_carved_dev_split(tmp_path: Path) -> None:
    folder = _sst2_folder(tmp_path, {"train": ("train", 200), "test": ("test", 30)})
    original = load_dataset(folder, ["train"]).split("train")
    cfg = DataConfig(path=str(folder))
    eff = resolve_data(cfg)
    assert (eff.train_split, eff.dev_split, eff.test_split) == ("train", CARVED, "test")
    assert resolve_split(cfg, "dev") == CARVED
    ds = load_data(cfg)
    train, dev = ds.split("train"), ds.split(CARVED)
    assert (len(train), len(dev)) == (180, 20)  # the default 10 %
    assert Counter(_rows(train) + _rows(dev)) == Counter(_rows(original))  # the carved rows left train
    shares = Counter(original.labels)
    for label, count in Counter(dev.labels).items():
        assert abs(count - 20 * shares[label] / 200) < 1
    assert "carved from 10% of train" in dev.source
    # loading train alone (ADA does) still leaves the carved rows out
    assert _rows(load_data(cfg, ["train"]).split("train")) == _rows(train)
    assert "carved from 10% of train, at most 1000 rows" in describe_dev(cfg)


def test_carve_sizes_cap_and_count(tmp_path: Path) -> None:
    folder = _sst2_folder(tmp_path, {"train": ("train", 200), "test": ("test", 10)})
    assert len(load_data(DataConfig(path=str(folder), carve_dev=0.5, carve_dev_max=25)).split(CARVED)) == 25
    assert len(load_data(DataConfig(path=str(folder), carve_dev=33)).split(CARVED)) == 33  # a count: no cap
    with pytest.raises(DataError, match="too few to carve"):
        load_data(DataConfig(path=str(folder), carve_dev=200))
    from distat.config import parse_trial_config
    from distat.errors import ConfigError

    for bad in (1.5, 0, True):
        with pytest.raises(ConfigError, match="carve_dev"):
            parse_trial_config({"data": {"path": str(folder), "carve_dev": bad}})


def test_fingerprint_tells_carved_from_shipped_dev_and_carves_apart(tmp_path: Path) -> None:
    folder = _sst2_folder(tmp_path, {"train": ("train", 200), "dev": ("dev", 20), "test": ("test", 10)})
    shipped = load_data(DataConfig(path=str(folder)))
    carved = load_data(DataConfig(path=str(folder), dev_split=CARVED))
    other_seed = load_data(DataConfig(path=str(folder), dev_split=CARVED, carve_seed=14))
    other_size = load_data(DataConfig(path=str(folder), dev_split=CARVED, carve_dev=0.2))
    again = load_data(DataConfig(path=str(folder), dev_split=CARVED))
    prints = {shipped.fingerprint, carved.fingerprint, other_seed.fingerprint, other_size.fingerprint}
    assert len(prints) == 4
    assert again.fingerprint == carved.fingerprint
    assert _rows(again.split(CARVED)) == _rows(carved.split(CARVED))
    assert _rows(other_seed.split(CARVED)) != _rows(carved.split(CARVED))


def test_carve_is_the_same_in_another_process(tmp_path: Path) -> None:
    folder = _sst2_folder(tmp_path, {"train": ("train", 120), "test": ("test", 10)})
    code = ("import json, sys; from distat.config import DataConfig, load_data; "
            "ds = load_data(DataConfig(path=sys.argv[1])); "
            "print(json.dumps([ds.fingerprint, ds.split('carved').text_a]))")
    out = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "123"})  # set hashing apart
    ds = load_data(DataConfig(path=str(folder)))
    assert json.loads(out.stdout) == [ds.fingerprint, ds.split(CARVED).text_a]


# --------------------------------------------------------------------------------------------------
# One resolution: dev, validation, carved, remapped


def test_dev_resolves_to_dev_then_validation_then_carved(tmp_path: Path) -> None:
    with_dev = _sst2_folder(tmp_path, {"train": ("train", 20), "dev": ("dev", 5)}, "a")
    with_validation = _sst2_folder(tmp_path, {"train": ("train", 20), "validation": ("dev", 5)}, "b")
    assert resolve_split(DataConfig(path=str(with_dev)), "dev") == "dev"
    assert resolve_split(DataConfig(path=str(with_validation)), "dev") == "validation"
    assert describe_dev(DataConfig(path=str(with_dev))) == ""
    eff = resolve_data(DataConfig(path=str(with_validation)))
    assert eff.dev_split == "validation" and eff.test_split is None
    assert resolve_data(eff) == eff  # idempotent: a checkpoint's recorded config resolves to itself
    with pytest.raises(DataError, match=r"no split 'test' \(data.test_split\); its splits: train, validation"):
        resolve_split(eff, "test")


def test_dev_split_test_reaches_the_attack_side(tmp_path: Path, tiny_model_dir: Path) -> None:
    """``trial.data.dev_split: test`` with ``attack.split: dev``: the evaluation attacks the test split (it loaded
    the literal 'dev' and died after training); checked up front by the search too."""
    import yaml

    from distat.app.search import check_splits
    from distat.search.space import load_search_config

    from helpers import search_yaml

    folder = _sst2_folder(tmp_path, {"train": ("train", 40), "test": ("test", 12)})
    path = search_yaml(tmp_path, tiny_model_dir, "remap",
                       updates={"trial": {"data": {"path": str(folder), "dev_split": "test",
                                                   "max_dev_examples": None}}})
    scfg = load_search_config(path)
    tcfg = scfg.base_trial()
    assert scfg.attack.split == "dev"
    assert resolve_split(tcfg.data, scfg.attack.split) == "test"
    ds = load_data(tcfg.data, [scfg.attack.split])  # exactly what distat.search.evaluation does
    assert _rows(ds.split(resolve_split(tcfg.data, scfg.attack.split))) == _rows(load_dataset(folder).split("test"))
    check_splits(scfg)  # resolves: no error

    raw = yaml.safe_load(path.read_text())
    raw["trial"]["data"]["dev_split"] = "validation"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(DataError, match=r"has no split 'validation' \(data.dev_split\); its splits: train, test"):
        check_splits(load_search_config(path))


# --------------------------------------------------------------------------------------------------
# Training on a train + test folder, and the up-front one-line error


def test_train_and_test_only_folder_trains_on_the_carved_dev(tmp_path: Path, tiny_model_dir: Path) -> None:
    from distat.config import parse_trial_config
    from distat.training import checkpoint_config, load_splits, run_trial

    folder = _sst2_folder(tmp_path, {"train": ("train", 60), "test": ("test", 10)})
    cfg = parse_trial_config({
        "seed": 5, "data": {"path": str(folder), "max_length": 32}, "model": {"backbone": str(tiny_model_dir)},
        "train": {"epochs": 1, "batch_size": 16, "lr": 1e-3}, "output_dir": str(tmp_path / "out"),
    })
    started: dict = {}
    result = run_trial(cfg, on_start=started.update)
    assert (started["train_examples"], started["dev_examples"]) == (54, 6)
    saved = checkpoint_config(result.checkpoint)
    assert saved.data.dev_split == CARVED and saved.data.carve_seed == 13  # the effective settings, recorded
    # the attack side, reading the checkpoint's config, gets the very rows training tuned on
    _, _, dev = load_splits(cfg)
    ds = load_data(saved.data, ["dev"])
    assert _rows(ds.split(resolve_split(saved.data, "dev"))) == _rows(dev)
    # `distat attack --model <checkpoint> --data <folder> --split dev` resolves with the model's own settings
    from distat.app.attack import AttackRequest, _data_config

    assert _data_config(AttackRequest(model=str(result.checkpoint), data=str(folder), split="dev")) == saved.data
    assert _data_config(AttackRequest(model=str(tiny_model_dir), data=str(folder))) == DataConfig(path=str(folder))


def test_unresolvable_split_is_one_line_before_training(tmp_path: Path, tiny_model_dir: Path, capsys) -> None:
    from distat.cli import main

    folder = _sst2_folder(tmp_path, {"train": ("train", 20), "test": ("test", 5)})
    config = tmp_path / "trial.yaml"
    config.write_text(json.dumps({"data": {"path": str(folder), "dev_split": "validation"},
                                  "model": {"backbone": str(tiny_model_dir)}, "output_dir": str(tmp_path / "out")}))
    assert main(["train", str(config), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"distat: error: {folder} has no split 'validation' (data.dev_split); its splits: train, test"]
    assert not (tmp_path / "out").exists()  # nothing started
