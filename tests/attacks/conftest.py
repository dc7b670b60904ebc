"""Fixtures for the attack tests: the offline resources (built once into the distat cache) and a tiny
BERT briefly trained on shared SST-2 rows, so that it depends on words and can be attacked."""

from __future__ import annotations

import pytest

from helpers import shared_data_dir


@pytest.fixture(scope="session")
def victim_result(tmp_path_factory, tiny_model_dir):
    """The tiny BERT fine-tuned for a few epochs on 600 SST-2 rows (a TrialResult)."""
    from distat.config import parse_trial_config
    from distat.training import run_trial

    out = tmp_path_factory.mktemp("victim")
    cfg = parse_trial_config({
        "seed": 1,
        "data": {"path": str(shared_data_dir() / "sst2"), "max_train_examples": 600, "max_dev_examples": 200,
                 "max_length": 48},
        "model": {"backbone": str(tiny_model_dir)},
        "train": {"epochs": 4, "batch_size": 16, "lr": 2e-3},
        "output_dir": str(out),
    })
    result = run_trial(cfg)
    assert result.metrics["clean_acc"] > 0.6, result.metrics  # it learned something from words
    return result


@pytest.fixture(scope="session")
def sst2_victim(victim_result):
    """(model, tokenizer) of the trained tiny victim."""
    return victim_result.model.eval(), victim_result.tokenizer
