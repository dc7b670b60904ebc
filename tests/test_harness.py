"""The test session's own rules (tests/conftest.py, tests/helpers.py): under CI a test that needs the missing
shared data fails the run instead of skipping; the session never uses the user's distat cache or Ray token."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

_NEEDS_DATA = """
from helpers import shared_data_dir

def test_needs_shared_data():
    assert shared_data_dir().is_dir()
"""


def _pytest(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """pytest on a one-test file needing the shared data, alone (its own rootdir and empty config)."""
    (tmp_path / "test_one.py").write_text(_NEEDS_DATA)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    base = {k: v for k, v in os.environ.items() if k not in ("CI", "DISTAT_SHARED_DATA", "PYTEST_ADDOPTS")}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "test_one.py"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**base, "PYTHONPATH": str(TESTS), **env})
    return out


@pytest.mark.parametrize("ci", ["true", "1"])
def test_missing_shared_data_fails_the_run_under_ci(tmp_path, ci):
    out = _pytest(tmp_path, CI=ci, DISTAT_SHARED_DATA=str(tmp_path / "missing"))
    assert out.returncode == 1, out.stdout[-2000:]
    assert "1 failed" in out.stdout and "shared data not found" in out.stdout


@pytest.mark.parametrize("ci", [None, "false"])
def test_missing_shared_data_skips_outside_ci(tmp_path, ci):
    out = _pytest(tmp_path, DISTAT_SHARED_DATA=str(tmp_path / "missing"), **({"CI": ci} if ci else {}))
    assert out.returncode == 0, out.stdout[-2000:]
    assert "1 skipped" in out.stdout and "shared data not found" in out.stdout


def test_present_shared_data_passes_under_ci(tmp_path):
    (tmp_path / "data").mkdir()
    out = _pytest(tmp_path, CI="true", DISTAT_SHARED_DATA=str(tmp_path / "data"))
    assert out.returncode == 0 and "1 passed" in out.stdout, out.stdout[-2000:]


def test_session_uses_no_user_cache_nor_user_ray_token():
    from distat.resources import cache_dir

    cache = Path(os.environ["DISTAT_CACHE_DIR"])
    assert cache_dir() == cache and cache.is_dir()
    user_default = Path.home() / ".cache" / "distat"
    assert cache.resolve() != user_default.resolve()
    if not os.environ.get("DISTAT_TEST_CACHE_DIR"):
        assert cache.parent.name.startswith("distat-tests-"), cache  # the session's own temporary folder
    if not os.environ.get("RAY_AUTH_TOKEN"):
        assert Path(os.environ["RAY_AUTH_TOKEN_PATH"]).is_file()  # never ~/.ray/auth_token written by ray.init
