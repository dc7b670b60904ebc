"""benchmarks/paper_tables.py end to end on its smoke preset (a tiny model, 2 seeds, 3 methods and 2 AMDA rows):
the claims come out as paired differences with verdicts, the results file holds the table, and a second run reuses
every finished search and attack (resumable)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(tiny_model_dir: Path, tmp_path: Path) -> tuple[dict, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "paper_tables.py"), "--preset", "smoke",
                           "--backbone", str(tiny_model_dir), "--workdir", str(tmp_path / "work"),
                           "--results", str(tmp_path / "results")], env=env, capture_output=True, text=True,
                          timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


@pytest.mark.slow
def test_paper_tables_smoke_preset_judges_claims_and_resumes(tiny_model_dir, attack_paths, tmp_path):
    result, _ = _run(tiny_model_dir, tmp_path)
    claims = result["claims"]
    taylor = "pgd Eq. 8 taylor error < 10% of the loss"
    assert set(claims) == {"adaptive_pgd-pgd robust pwws", "adaptive_pgd-pgd clean within ±0.6", taylor,
                           "amda_tmix-ada robust pwws", "amda_tmix-standard robust pwws",
                           "amda_tmix-ada clean (mixup wins ADA's cost back)",
                           "ada-standard clean (ADA costs clean accuracy)",
                           "ada static-targeted robust pwws (static overstates)",
                           "amda_tmix static-targeted robust pwws (static overstates)"}
    for claim in claims.values():
        assert claim["lo"] <= claim["diff"] <= claim["hi"]
        assert claim["verdict"] in ("reproduced", "refuted", "unresolved")
    assert claims[taylor]["diff"] > 0  # PGD's trials logged Eq. 8's error (a relative error, never 0 here)
    text = Path(result["results"]).read_text()
    for row in ("standard", "pgd", "adaptive_pgd", "ada", "amda_tmix"):
        assert f"| {row} | 2 |" in text
    assert "git revision" in text and "Claims" in text
    # one threat-model spec per column: every model was attacked under the same settings
    hashes = next(line for line in text.splitlines() if line.startswith("- threat-model spec hashes:"))
    assert "None" not in hashes and "/" not in hashes

    # every model of both seeds was attacked on the same test examples; a second run attacks nothing again
    journals = sorted((tmp_path / "work").glob("smoke/searches/*/trials/*/test/attack.pwws.jsonl"))
    assert len(journals) == 10
    # the AMDA rows' models were also scored on the ADA victim's attack of the same test examples, per example
    statics = sorted((tmp_path / "work").glob("smoke/searches/*/trials/*/test/static.csv"))
    assert len(statics) == 10 and all(len(p.read_text().splitlines()) == 7 for p in statics)
    before = {p: p.stat().st_mtime_ns for p in journals}
    again, stderr = _run(tiny_model_dir, tmp_path)
    assert again["claims"] == claims
    assert {p: p.stat().st_mtime_ns for p in journals} == before
    assert stderr.count("already evaluated on test") == 10
