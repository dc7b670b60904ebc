"""``distat attack``, ``distat resources`` and ``distat static`` from the command line."""

from __future__ import annotations

import csv

import pytest

from distat.cli import main

from helpers import shared_data_dir


def test_attack_prints_metrics_and_writes_csv_and_static_set(tmp_path, attack_paths, victim_result, capsys):
    out_csv, adv = tmp_path / "records.csv", tmp_path / "adv" / "test.tsv"
    argv = ["attack", "--model", str(victim_result.checkpoint), "--data", str(shared_data_dir() / "sst2"),
            "--recipe", "pwws", "--n", "4", "--actors", "0", "--max-length", "48", "--csv", str(out_csv),
            "--export", str(adv), "-q"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "robust_acc" in out and "attack_success_rate" in out
    # the threat model of these numbers: the same hash for the same attack, another for another modify rate
    digest = out.split("threat_spec_hash", 1)[1].split()[0]
    assert len(digest) == 10
    assert main([*argv[:-1], "--max-modify-rate", "0.1", "-q"]) == 0
    assert capsys.readouterr().out.split("threat_spec_hash", 1)[1].split()[0] != digest
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 4 and {r["status"] for r in rows} <= {"success", "failed", "skipped"}
    successes = sum(r["status"] == "success" for r in rows)
    assert len(adv.read_text().splitlines()) == successes + 1

    # the exported static set evaluates like any other adversarial set
    assert main(["static", "--model", str(victim_result.checkpoint), "--data", str(adv)]) == 0
    assert "static_acc" in capsys.readouterr().out


def test_static_on_advglue(victim_result, capsys):
    argv = ["static", "--model", str(victim_result.checkpoint), "--data",
            str(shared_data_dir() / "advglue" / "sst2.tsv"), "--num-labels", "2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "static_acc" in out and "148" in out


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--recipe", "deepwordbug"], "unknown attack recipe"),
        (["--model", "/nonexistent/model"], "/nonexistent/model"),
        (["--data", "/nonexistent/data"], "/nonexistent/data"),
        (["--resource", "wordnet=/nonexistent/nltk"], "distat resources build"),
        (["--n", "0"], "--n"),
    ],
)
def test_attack_bad_input_is_one_line_exit_2(extra, needle, attack_paths, victim_result, capsys):
    argv = ["attack", "--model", str(victim_result.checkpoint), "--data", str(shared_data_dir() / "sst2"),
            "--recipe", "pwws", "--n", "2", "--actors", "0", "-q"]
    for i in range(0, len(extra), 2):  # replace or append flag values
        if extra[i] in argv:
            argv[argv.index(extra[i]) + 1] = extra[i + 1]
        else:
            argv += extra[i : i + 2]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("distat: error: ") and needle in err[-1]
    assert not any("Traceback" in line for line in err)


def test_resources_show_and_build_skip_present(attack_paths, capsys, monkeypatch):
    monkeypatch.setenv("DISTAT_CACHE_DIR", str(attack_paths.wordnet.parent))
    code = main(["resources", "show"])
    out = capsys.readouterr().out
    assert "wordnet" in out and "word_vectors" in out and "calibration" in out
    assert code in (0, 1)  # 1 only while the MLM is not built
    before = attack_paths.word_vectors.stat().st_mtime_ns
    assert main(["resources", "build", "--parts", "nltk", "vectors"]) == 0
    assert attack_paths.word_vectors.stat().st_mtime_ns == before  # present: not rebuilt
    assert main(["resources", "build", "--parts", "nope"]) == 2
