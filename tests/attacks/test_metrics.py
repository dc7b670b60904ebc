"""Robust metrics, attack records (CSV), static adversarial sets (export and evaluation)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from distat.attacks.metrics import (
    AttackRecord,
    RobustMetrics,
    export_adversarial_tsv,
    read_records_csv,
    summarize,
    wilson_interval,
    write_records_csv,
)
from distat.attacks.static import load_static_set, static_eval
from distat.data import load_dataset
from distat.errors import DataError

from helpers import shared_data_dir

# --------------------------------------------------------------------------------------------------
# helpers


def rec(index, status, *, label=1, queries=10, perturbed=0, total=10, text=None, other=None, adv=None):
    """A consistent record: skipped = wrong on clean, success = flipped, failed = kept the label."""
    original_pred = 1 - label if status == "skipped" else label
    perturbed_pred = {"success": 1 - label, "failed": label, "skipped": None}[status]
    if status == "success" and adv is None:
        adv = f"adversarial {index}"
    return AttackRecord(
        index=index, text=text or f"sentence {index}", perturbed_text=adv, other_text=other, label=label,
        original_pred=original_pred, perturbed_pred=perturbed_pred, status=status, num_queries=queries,
        words_perturbed=perturbed, words_total=total,
    )


def static_split_equal(a, b):
    return (a.text_a, a.text_b, a.labels) == (b.text_a, b.text_b, b.labels)


# --------------------------------------------------------------------------------------------------
# Wilson interval


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(8, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.4902, 0.9433)
    lo, hi = wilson_interval(1, 2)  # symmetric around 0.5
    assert lo == pytest.approx(1 - hi) and (round(lo, 4), round(hi, 4)) == (0.0945, 0.9055)
    lo, hi = wilson_interval(50, 100)
    assert (round(lo, 4), round(hi, 4)) == (0.4038, 0.5962)


def test_wilson_interval_is_the_closed_form_score_interval():
    """scipy's interval is the textbook Wilson formula (z = 1.959964 at 95%), clipped at 0/n and n/n."""
    z = 1.959964
    for n in range(1, 31):
        for k in range(n + 1):
            p, z2 = k / n, z * z
            denom = 1.0 + z2 / n
            centre = (p + z2 / (2 * n)) / denom
            half = z / denom * math.sqrt(p * (1.0 - p) / n + z2 / (4 * n * n))
            expected = (0.0 if k == 0 else centre - half, 1.0 if k == n else centre + half)
            assert wilson_interval(k, n) == pytest.approx(expected, abs=1e-7), (k, n)


def test_wilson_interval_edges():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(10, 10)
    assert hi == 1.0 and round(lo, 4) == 0.7225  # n / (n + z^2)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and round(hi, 4) == 0.2775
    wide = wilson_interval(8, 10, confidence_level=0.99)  # wider than 95%
    assert wide[0] < 0.4902 and wide[1] > 0.9433
    for bad in [(-1, 3), (4, 3), (0, -1)]:
        with pytest.raises(ValueError):
            wilson_interval(*bad)


# --------------------------------------------------------------------------------------------------
# records and summarize


def mixed_records():
    return [
        rec(0, "success", queries=30, perturbed=1, total=10),   # 10%
        rec(1, "success", queries=50, perturbed=1, total=4),    # 25%
        rec(2, "success", label=0, queries=20, perturbed=3, total=5),  # 60%
        rec(3, "failed", queries=100, perturbed=2, total=8),
        rec(4, "skipped", queries=0, total=7),
        rec(5, "skipped", label=0, queries=1, total=3),
        rec(6, "failed", label=0, queries=40, total=6),
        rec(7, "success", queries=60, perturbed=2, total=8),    # 25%
    ]


def test_summarize_mixed():
    m = summarize(mixed_records())
    assert (m.n, m.skipped, m.failed, m.succeeded) == (8, 2, 2, 4)
    assert m.clean_acc == 6 / 8
    assert m.robust_acc == 2 / 8
    assert m.attack_success_rate == 4 / 6
    assert m.perturbed_word_pct == pytest.approx((10 + 25 + 60 + 25) / 4)  # successes only: 30.0
    assert m.avg_queries == (30 + 50 + 20 + 100 + 40 + 60) / 6  # not skipped: 50.0
    assert m.clean_acc_ci == wilson_interval(6, 8)
    assert m.robust_acc_ci == wilson_interval(2, 8)
    assert m.attack_success_rate_ci == wilson_interval(4, 6)


def test_summarize_degenerate_cases():
    empty = summarize([])
    assert (empty.n, empty.clean_acc, empty.robust_acc, empty.attack_success_rate) == (0, 0.0, 0.0, 0.0)
    assert empty.clean_acc_ci == empty.attack_success_rate_ci == (0.0, 1.0)
    all_skipped = summarize([rec(0, "skipped", queries=5), rec(1, "skipped", label=0, queries=7)])
    assert all_skipped.clean_acc == 0.0 and all_skipped.robust_acc == 0.0
    assert all_skipped.attack_success_rate == 0.0 and all_skipped.attack_success_rate_ci == (0.0, 1.0)
    assert all_skipped.avg_queries == 0.0 and all_skipped.perturbed_word_pct == 0.0
    robust = summarize([rec(i, "failed", queries=i) for i in range(4)])
    assert robust.clean_acc == robust.robust_acc == 1.0 and robust.attack_success_rate == 0.0
    assert robust.perturbed_word_pct == 0.0 and robust.avg_queries == 1.5
    assert robust.robust_acc_ci[1] == 1.0


def test_as_dict_is_flat_floats_with_stable_names():
    d = summarize(mixed_records()).as_dict(prefix="test/")
    assert set(d) == {
        f"test/{k}" for k in (
            "n", "clean_acc", "robust_acc", "attack_success_rate", "perturbed_word_pct", "avg_queries",
            "skipped", "failed", "succeeded", "clean_acc_lo", "clean_acc_hi", "robust_acc_lo",
            "robust_acc_hi", "attack_success_rate_lo", "attack_success_rate_hi",
        )
    }
    assert all(type(v) is float for v in d.values())
    assert d["test/robust_acc"] == 0.25 and d["test/n"] == 8.0
    assert (d["test/attack_success_rate_lo"], d["test/attack_success_rate_hi"]) == wilson_interval(4, 6)
    assert isinstance(summarize([]), RobustMetrics)


def test_record_invariants():
    base = rec(0, "failed").to_dict()
    with pytest.raises(ValueError, match="status"):
        AttackRecord.from_dict({**base, "status": "error"})
    with pytest.raises(ValueError, match="skipped"):  # correct on clean but marked skipped
        AttackRecord.from_dict({**base, "status": "skipped"})
    with pytest.raises(ValueError, match="skipped"):  # wrong on clean but not marked skipped
        AttackRecord.from_dict({**base, "original_pred": 0})
    with pytest.raises(ValueError, match="success"):  # a success without a perturbed text
        AttackRecord.from_dict({**rec(1, "success").to_dict(), "perturbed_text": None})
    with pytest.raises(ValueError, match="label"):  # a "success" that kept the label
        AttackRecord.from_dict({**rec(1, "success").to_dict(), "perturbed_pred": 1})
    with pytest.raises(ValueError, match="integer"):
        AttackRecord.from_dict({**base, "num_queries": 2.5})
    with pytest.raises(ValueError, match="missing"):
        AttackRecord.from_dict({k: v for k, v in base.items() if k != "label"})
    assert AttackRecord.from_dict({**base, "other_text": ""}).other_text is None


def test_to_dict_from_dict_round_trip():
    for r in mixed_records():
        assert AttackRecord.from_dict(r.to_dict()) == r


def test_csv_round_trip_is_exact(tmp_path):
    tricky = 'a "quoted", comma\tand tab\nnew line \r\n é ü 中文 😀'
    records = [
        *mixed_records(),
        rec(8, "success", text=tricky, adv=tricky.upper(), other=" lead and trail  ", perturbed=1, total=9),
        rec(9, "failed", text='"fully quoted"', other="q?"),
        rec(10, "skipped", text="a,b,,c", other='""'),
    ]
    path = write_records_csv(records, tmp_path / "sub" / "records.csv")
    back = read_records_csv(path)
    assert back == records
    assert [type(r.perturbed_pred) for r in back] == [type(r.perturbed_pred) for r in records]


def test_read_records_csv_errors(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("index,text\n0,x\n", encoding="utf-8")
    with pytest.raises(DataError, match="no column"):
        read_records_csv(bad)
    path = write_records_csv([rec(0, "failed")], tmp_path / "r.csv")
    path.write_text(path.read_text(encoding="utf-8").replace("\n0,failed,", "\nzero,failed,"), encoding="utf-8")
    with pytest.raises(DataError, match=r"line 2: index 'zero' is not an integer"):
        read_records_csv(path)
    with pytest.raises(DataError, match="cannot read"):
        read_records_csv(tmp_path / "missing.csv")


# --------------------------------------------------------------------------------------------------
# static adversarial set export


def test_export_single_sentence_round_trip(tmp_path):
    records = [
        rec(0, "success", label=1, adv='a "great" film\twith tabs\nand lines'),
        rec(1, "failed"),
        rec(2, "skipped"),
        rec(3, "success", label=0, adv='"bad" movie'),
        rec(4, "success", label=1, adv="plain text , with spaces ."),
    ]
    n = export_adversarial_tsv(records, tmp_path / "adv" / "sst2_adv.tsv")
    assert n == 3
    lines = (tmp_path / "adv" / "sst2_adv.tsv").read_text(encoding="utf-8").split("\n")
    assert lines[0] == "sentence\tlabel" and len([x for x in lines if x]) == 4
    ds = load_dataset(tmp_path / "adv", splits=["sst2_adv"])
    split = ds.split("sst2_adv")
    assert ds.text_fields == ("sentence",) and split.text_b is None
    assert split.text_a == ['a "great" film with tabs and lines', '"bad" movie', "plain text , with spaces ."]
    assert split.labels == [1, 0, 1]
    assert static_split_equal(load_static_set(tmp_path / "adv" / "sst2_adv.tsv", num_labels=2), split)


def test_export_pair_round_trip(tmp_path):
    records = [
        rec(0, "success", label=0, other="What is it ?", adv="It is a \"thing\" .", text="It is a thing ."),
        rec(1, "failed", other="Who ?", text="Nobody ."),
        rec(2, "success", label=1, other="Where\tis\nit ?", adv="Over there ."),
    ]
    path = tmp_path / "qnli_adv.tsv"
    assert export_adversarial_tsv(records, path, text_field="sentence", other_field="question") == 2
    assert path.read_text(encoding="utf-8").split("\n")[0] == "question\tsentence\tlabel"
    ds = load_dataset(tmp_path, splits=["qnli_adv"])
    split = ds.split("qnli_adv")
    assert ds.text_fields == ("question", "sentence")
    assert split.text_a == ["What is it ?", "Where is it ?"]
    assert split.text_b == ['It is a "thing" .', "Over there ."]
    assert split.labels == [0, 1]
    with pytest.raises(ValueError, match="other_field"):
        export_adversarial_tsv(records, tmp_path / "x.tsv")  # pairs need the other column's name
    with pytest.raises(ValueError, match="no other_text"):
        export_adversarial_tsv(mixed_records(), tmp_path / "y.tsv", other_field="question")


def test_export_with_no_success_writes_header_only(tmp_path):
    assert export_adversarial_tsv([rec(0, "failed"), rec(1, "skipped")], tmp_path / "none.tsv") == 0
    assert (tmp_path / "none.tsv").read_text(encoding="utf-8") == "sentence\tlabel\n"


# --------------------------------------------------------------------------------------------------
# static evaluation


def test_load_static_set_file_and_folder():
    advglue = shared_data_dir() / "advglue"
    sst2 = load_static_set(str(advglue / "sst2.tsv"), num_labels=2)
    assert len(sst2) == 148 and sst2.text_b is None and set(sst2.labels) == {0, 1}
    qnli = load_static_set(advglue, "qnli", num_labels=2)
    assert len(qnli) == 148 and qnli.text_b is not None
    with pytest.raises(DataError, match="pick one"):
        load_static_set(advglue)
    with pytest.raises(DataError, match="does not exist"):
        load_static_set(advglue / "mnli.tsv")
    with pytest.raises(DataError, match="outside"):
        load_static_set(advglue / "sst2.tsv", num_labels=1)


class _Constant(nn.Module):
    """Always predicts class ``k`` (a stand-in classifier with a known accuracy)."""

    def __init__(self, k: int, num_labels: int = 2) -> None:
        super().__init__()
        self.config = SimpleNamespace(num_labels=num_labels)
        self.bias = nn.Parameter(torch.zeros(num_labels))
        self.k = k

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        logits = self.bias.expand(input_ids.shape[0], -1).clone()
        logits[:, self.k] += 1.0
        return SimpleNamespace(logits=logits)


def test_static_eval_constant_model_has_known_accuracy(tokenizer):
    split = load_static_set(shared_data_dir() / "advglue" / "sst2.tsv", num_labels=2)
    positives = sum(split.labels)
    for k, correct in [(1, positives), (0, len(split) - positives)]:
        out = static_eval(_Constant(k), tokenizer, split, batch_size=50)
        assert out["static_n"] == 148.0
        assert out["static_acc"] == correct / 148
        assert (out["static_acc_lo"], out["static_acc_hi"]) == wilson_interval(correct, 148)


class _BagOfWords(nn.Module):
    """Mean of random token (+ segment) embeddings over real tokens, with dropout: predictions vary with the
    input, depend on the mask and truncation, and differ in train mode (the random tiny BERT predicts one
    class for every AdvGLUE row, so it alone could not tell a right loop from a wrong one)."""

    def __init__(self, vocab_size: int, num_labels: int = 2) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.config = SimpleNamespace(num_labels=num_labels)
        self.words = nn.Embedding(vocab_size, num_labels)
        self.segments = nn.Embedding(2, num_labels)
        self.dropout = nn.Dropout(0.5)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        assert not torch.is_grad_enabled()
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        vectors = self.dropout(self.words(input_ids) + 0.1 * self.segments(token_type_ids))
        mask = attention_mask.unsqueeze(-1).float()
        return SimpleNamespace(logits=(vectors * mask).sum(1) / mask.sum(1))


@pytest.mark.parametrize("task", ["sst2", "qnli"])
def test_static_eval_matches_plain_loop_on_input_dependent_model(tokenizer, task):
    split = load_static_set(shared_data_dir() / "advglue" / f"{task}.tsv", num_labels=2)
    model = _BagOfWords(tokenizer.vocab_size)
    out = static_eval(model, tokenizer, split, batch_size=16, max_length=24)
    assert model.training  # mode restored
    preds = _plain_predictions(model, tokenizer, split, 24)
    assert 5 < sum(preds) < 143  # predictions vary with the input
    assert out["static_acc"] == sum(p == y for p, y in zip(preds, split.labels, strict=True)) / 148
    assert static_eval(model, tokenizer, split, batch_size=7, max_length=24) == out  # no dropout, any batching
    short = static_eval(model, tokenizer, split, max_length=8)  # max_length is honoured
    assert short["static_acc"] == _plain_accuracy(model, tokenizer, split, 8) / 148


def _plain_predictions(model, tokenizer, split, max_length):
    """One example at a time, no padding: the reference static_eval must agree with."""
    model.eval()
    preds = []
    with torch.no_grad():
        for i in range(len(split)):
            b = None if split.text_b is None else split.text_b[i]
            enc = tokenizer(split.text_a[i], b, truncation=True, max_length=max_length, return_tensors="pt")
            preds.append(int(model(**enc).logits.argmax(-1).item()))
    return preds


def _plain_accuracy(model, tokenizer, split, max_length):
    return sum(p == y for p, y in zip(_plain_predictions(model, tokenizer, split, max_length), split.labels, strict=True))


def test_static_eval_tiny_model(tiny_model, tokenizer):
    advglue = shared_data_dir() / "advglue"
    split = load_static_set(advglue / "sst2.tsv", num_labels=2)
    assert tiny_model.training
    out = static_eval(tiny_model, tokenizer, split, batch_size=32, max_length=64)
    assert tiny_model.training  # mode restored
    assert set(out) == {"static_acc", "static_acc_lo", "static_acc_hi", "static_n"}
    assert out["static_n"] == 148.0 and 0.0 <= out["static_acc"] <= 1.0
    assert out["static_acc_lo"] <= out["static_acc"] <= out["static_acc_hi"]
    assert (out["static_acc_lo"], out["static_acc_hi"]) == wilson_interval(round(out["static_acc"] * 148), 148)
    for task in ("sst2", "qnli"):  # a real BERT (token types for pairs) on a few rows against the plain loop
        rows = load_static_set(advglue / f"{task}.tsv", num_labels=2).subset(range(0, 148, 12))
        sub = static_eval(tiny_model, tokenizer, rows, batch_size=4, max_length=64)
        assert sub["static_n"] == len(rows) == 13
        assert sub["static_acc"] == _plain_accuracy(tiny_model, tokenizer, rows, 64) / 13


def test_static_eval_on_exported_set_and_label_check(tiny_model, tokenizer, tmp_path):
    records = [rec(i, "success", label=i % 2, adv=f"an adversarial sentence number {i}") for i in range(5)]
    export_adversarial_tsv(records, tmp_path / "adv.tsv")
    split = load_static_set(tmp_path / "adv.tsv")
    out = static_eval(tiny_model, tokenizer, split, device="cpu")
    assert out["static_n"] == 5.0
    assert out["static_acc"] == _plain_accuracy(tiny_model, tokenizer, split, 128) / 5
    three = load_static_set(tmp_path / "adv.tsv", num_labels=3)
    bad = type(three)(three.name, three.text_a, None, [2, 0, 1, 0, 1], three.source)
    with pytest.raises(DataError, match="2 outputs"):
        static_eval(tiny_model, tokenizer, bad)
