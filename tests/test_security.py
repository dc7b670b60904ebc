"""Security defaults, checked on the source (ast) and on behaviour:

* checkpoints are safetensors; the one pickle-based file (the optimiser/RNG state) is read with
  ``torch.load(weights_only=True)``, everywhere, so a planted checkpoint cannot run code;
* YAML is read with ``yaml.safe_load`` only;
* ``trust_remote_code`` defaults to False and reaches ``from_pretrained`` only from the config;
* what distat starts binds 127.0.0.1 (``0.0.0.0`` only in comments of the launch files) and never turns Ray's
  token auth off;
* MLflow params never carry secrets (credentials in URIs, tokens, secret-named keys, environment values).
"""

from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "distat"
LAUNCH = REPO / "launch"


def sources() -> list[Path]:
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 20, "the package sources were not found"
    return files


def calls(path: Path) -> list[ast.Call]:
    return [n for n in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))) if isinstance(n, ast.Call)]


def dotted(node: ast.AST) -> str:
    """``torch.load`` for ``torch.load(...)``'s func, ``x.from_pretrained`` etc.; '' when not a plain name chain."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ".".join(reversed(parts)) if parts else ""


def keyword(call: ast.Call, name: str) -> ast.keyword | None:
    return next((k for k in call.keywords if k.arg == name), None)


def where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(REPO)}:{node.lineno}"


def imported_names(path: Path, module: str) -> set[str]:
    """Names imported with ``from <module> import ...`` in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == module for a in n.names}


# --------------------------------------------------------------------------------------------------
# deserialisation


def test_every_torch_load_is_weights_only():
    found, bad = [], []
    for path in sources():
        assert "load" not in imported_names(path, "torch"), f"{path}: `from torch import load` hides torch.load"
        for call in calls(path):
            if dotted(call.func) == "torch.load":
                found.append(where(path, call))
                kw = keyword(call, "weights_only")
                if kw is None or not (isinstance(kw.value, ast.Constant) and kw.value.value is True):
                    bad.append(where(path, call))
    assert found, "no torch.load found: the check looks at the wrong files"
    assert not bad, f"torch.load without weights_only=True: {bad}"


def test_yaml_is_only_safe_loaded():
    unsafe = {"load", "load_all", "unsafe_load", "unsafe_load_all", "full_load", "full_load_all", "Loader",
              "UnsafeLoader", "FullLoader", "CLoader", "CUnsafeLoader", "CFullLoader"}
    safe_loads, bad = 0, []
    for path in sources():
        bad += [f"{path.relative_to(REPO)}: from yaml import {n}" for n in imported_names(path, "yaml") & unsafe]
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "yaml":
                if node.attr in unsafe:
                    bad.append(f"{where(path, node)}: yaml.{node.attr}")
                safe_loads += node.attr == "safe_load"
    assert safe_loads, "no yaml.safe_load found: the check looks at the wrong files"
    assert not bad, f"unsafe YAML loading: {bad}"


def test_checkpoints_are_written_as_safetensors_only():
    torch_saves, bad = [], []
    for path in sources():
        for call in calls(path):
            name = dotted(call.func)
            if name == "torch.save":
                torch_saves.append(path.name)
            if name.endswith("save_pretrained"):
                kw = keyword(call, "safe_serialization")
                if kw is not None and not (isinstance(kw.value, ast.Constant) and kw.value.value is True):
                    bad.append(where(path, call))
    assert not bad, f"save_pretrained without safetensors: {bad}"
    # the only pickle-based file: train_state.pt (optimiser, scheduler, RNG), read back with weights_only=True
    assert torch_saves == ["training.py"], torch_saves


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_model_dir):
    """A real checkpoint of `run_trial` (tiny BERT, 8 rows, one epoch) and the config that wrote it."""
    from distat.config import parse_trial_config
    from distat.training import run_trial

    root = tmp_path_factory.mktemp("security")
    data = root / "data"
    data.mkdir()
    rows = "".join(f"review number {i} is {'good' if i % 2 else 'bad'}\t{i % 2}\n" for i in range(8))
    for split in ("train", "dev"):
        (data / f"{split}.tsv").write_text("sentence\tlabel\n" + rows)
    cfg = parse_trial_config({"seed": 1, "data": {"path": str(data), "max_length": 16},
                              "model": {"backbone": str(tiny_model_dir)}, "method": {"name": "fgm"},
                              "train": {"epochs": 1, "batch_size": 4}, "output_dir": str(root / "out")})
    result = run_trial(cfg)
    return result.checkpoint, cfg


def test_a_checkpoint_holds_safetensors_weights_and_a_weights_only_state(checkpoint):
    import torch

    ckpt, _ = checkpoint
    names = {p.name for p in ckpt.iterdir()}
    assert "model.safetensors" in names
    pickled = {n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"))}
    assert pickled == {"train_state.pt"}, pickled
    state = torch.load(ckpt / "train_state.pt", map_location="cpu", weights_only=True)
    assert state["epoch"] == 1


class _Planted:
    """Unpickling this (with weights_only=False) would create a file: code run by a checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_planted_pickle_in_a_checkpoint_is_refused_not_run(checkpoint, tmp_path):
    import shutil

    import torch

    from distat.errors import ModelError
    from distat.training import run_trial

    ckpt, cfg = checkpoint
    planted = tmp_path / "epoch_001"
    shutil.copytree(ckpt, planted)
    marker = tmp_path / "code-ran"
    state = torch.load(planted / "train_state.pt", map_location="cpu", weights_only=True)
    state["method"] = {"payload": _Planted(marker)}
    torch.save(state, planted / "train_state.pt")
    with pytest.raises(ModelError, match="cannot read it"):
        run_trial(cfg, tmp_path / "out", resume_from=planted)
    assert not marker.exists(), "unpickling the checkpoint ran code"


# --------------------------------------------------------------------------------------------------
# remote code


def test_trust_remote_code_defaults_false_and_comes_only_from_the_config():
    from distat.config import ModelConfig, TrialConfig

    assert ModelConfig().trust_remote_code is False and TrialConfig().model.trust_remote_code is False
    loaders, bad = 0, []
    for path in sources():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):  # a parameter defaults to False
                args = node.args
                positional = args.posonlyargs + args.args
                defaults = dict(zip([a.arg for a in positional][len(positional) - len(args.defaults):], args.defaults,
                                    strict=True))
                defaults.update({a.arg: d for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True)})
                default = defaults.get("trust_remote_code")
                if default is not None and not (isinstance(default, ast.Constant) and default.value is False):
                    bad.append(f"{where(path, node)}: {node.name}(trust_remote_code=...) must default to False")
            if not isinstance(node, ast.Call):
                continue
            slot = {"load_tokenizer": 1, "load_classifier": 2}.get(dotted(node.func).rsplit(".", 1)[-1])
            if slot is not None and len(node.args) > slot:  # distat's loaders take it positionally too
                source = dotted(node.args[slot])
                if not (source == "trust_remote_code" or source.endswith(".trust_remote_code")):
                    bad.append(f"{where(path, node)}: trust_remote_code={ast.unparse(node.args[slot])}")
            kw = keyword(node, "trust_remote_code")
            loaders += dotted(node.func).endswith("from_pretrained")
            if kw is None:
                continue  # transformers' own default: False
            value = kw.value
            source = dotted(value)
            if not (source == "trust_remote_code" or source.endswith(".trust_remote_code")):
                bad.append(f"{where(path, node)}: trust_remote_code={ast.unparse(value)} (pass it from the config)")
    assert loaders, "no from_pretrained found: the check looks at the wrong files"
    assert not bad, bad


# --------------------------------------------------------------------------------------------------
# network exposure


def _code_part(line: str, suffix: str) -> str:
    """The part of a line that is not a comment (shell/YAML ``#``; Python via tokenize)."""
    if suffix == ".py":
        try:
            tokens = list(tokenize.generate_tokens(io.StringIO(line + "\n").readline))
        except (tokenize.TokenError, IndentationError, SyntaxError):
            return line
        return "".join(t.string for t in tokens if t.type != tokenize.COMMENT)
    return line.split("#", 1)[0]


def test_nothing_binds_all_interfaces():
    files = sources() + sorted(p for p in LAUNCH.rglob("*") if p.is_file() and p.suffix != ".md")
    bad = []
    for path in files:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if "0.0.0.0" in line and "0.0.0.0" in _code_part(line, path.suffix):
                bad.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert not bad, f"binds every interface outside a comment: {bad}"


def test_ray_started_by_distat_has_no_dashboard_and_keeps_token_auth():
    inits = []
    for path in sources():
        assert "RAY_AUTH_MODE" not in path.read_text(encoding="utf-8"), f"{path} touches Ray's token auth"
        for call in calls(path):
            if dotted(call.func) == "ray.init":
                kw = keyword(call, "include_dashboard")
                inits.append((where(path, call), isinstance(getattr(kw, "value", None), ast.Constant)
                              and kw.value.value is False))
                host = keyword(call, "dashboard_host")
                assert host is None or ast.literal_eval(host.value) in ("127.0.0.1", "localhost")
    assert inits and all(ok for _, ok in inits), inits


# --------------------------------------------------------------------------------------------------
# secrets and MLflow


class _FakeClient:
    def __init__(self) -> None:
        self.logged: dict[str, str] = {}

    def get_run(self, run_id):
        return SimpleNamespace(data=SimpleNamespace(params={}))

    def log_batch(self, run_id, params=(), metrics=()):
        self.logged.update({p.key: p.value for p in params})


SECRETS = ("s3cr3t-pw", "hf_AbCdEfGhIjKlMnOpQrStUv", "plain-env-secret-42", "xyzzy-api-token", "ghp_0123456789abcdefABCDEF",
           "dbpass99")


def test_mlflow_params_never_carry_secrets(monkeypatch):
    from distat.tracking.mlflow import MLflowTrialCallback, Tracker

    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "plain-env-secret-42")
    tracker = Tracker.__new__(Tracker)
    tracker.client = _FakeClient()
    callback = MLflowTrialCallback("sqlite:///unused.db", "exp", Path("/tmp/search"))
    callback._tracker, callback._runs = tracker, {"t1": "run-1"}
    config = {
        "method": "pgd", "adv_lr": 0.05, "keep_checkpoints": 2, "max_tokens": 64,
        "tracking_uri": "http://alice:s3cr3t-pw@mlflow.internal:5000",
        "data": {"path": "hf:org/private-set?revision=main&token=hf_AbCdEfGhIjKlMnOpQrStUv"},
        "api_token": "xyzzy-api-token",
        "note": "copied from the env: plain-env-secret-42",
        "model": {"backbone": "/models/ghp_0123456789abcdefABCDEF"},
        "db": "postgresql://svc:dbpass99@db:5432/mlflow",
    }
    callback.on_trial_start(0, [], SimpleNamespace(trial_id="t1", config=config))
    logged = tracker.client.logged
    assert logged, "nothing logged: the check is vacuous"
    text = "\n".join(f"{k}={v}" for k, v in logged.items())
    for secret in SECRETS:
        assert secret not in text, (secret, logged)
    # everything else is logged as it was
    assert logged["method"] == "pgd" and logged["adv_lr"] == "0.05" and logged["keep_checkpoints"] == "2"
    assert logged["max_tokens"] == "64"
    assert logged["tracking_uri"] == "http://alice:***@mlflow.internal:5000"
    assert logged["data.path"].startswith("hf:org/private-set?revision=main&token=")
    assert logged["api_token"] == "***" and logged["db"] == "postgresql://svc:***@db:5432/mlflow"


def test_no_environment_variable_goes_to_mlflow():
    logging_calls = {"log_params", "log_param", "log_batch", "set_tag", "set_tags", "log_dict", "log_text",
                     "set_experiment_tag"}
    bad = []
    for path in sources():
        text = path.read_text(encoding="utf-8")
        for call in calls(path):
            if dotted(call.func).rsplit(".", 1)[-1] in logging_calls and "environ" in ast.get_source_segment(text, call):
                bad.append(where(path, call))
    assert not bad, bad


def test_tracking_errors_and_hints_mask_credentials():
    from distat.errors import DistatError
    from distat.tracking.mlflow import check_reachable, redact

    from helpers import free_port

    uri = f"http://alice:s3cr3t-pw@127.0.0.1:{free_port()}"
    with pytest.raises(DistatError) as err:
        check_reachable(uri, timeout=2)
    assert "unreachable" in str(err.value) and "s3cr3t-pw" not in str(err.value) and "alice:***@" in str(err.value)
    assert redact("sqlite:////srv/mlflow.db") == "sqlite:////srv/mlflow.db"  # nothing secret: unchanged


def test_search_yaml_cannot_smuggle_code_through_yaml_tags(tmp_path):
    from distat.config import read_yaml
    from distat.errors import ConfigError

    path = tmp_path / "evil.yaml"
    path.write_text(yaml.safe_dump({"seed": 1}) + "x: !!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        read_yaml(path)
    assert not (tmp_path / "pwned").exists()


def test_the_working_directory_is_not_masked_as_a_secret(monkeypatch):
    """``PWD`` names the shell's folder, not a password: the demo's `mlflow ui --backend-store-uri` line
    printed ``sqlite:///***/mlflow.db`` because the path under the current folder was masked."""
    from distat.tracking.mlflow import redact

    monkeypatch.setenv("PWD", "/work/checkout")
    monkeypatch.setenv("OLDPWD", "/home/someone")
    monkeypatch.setenv("DB_PWD", "hunter2-hunter2")
    assert redact("sqlite:////work/checkout/mlflow.db") == "sqlite:////work/checkout/mlflow.db"
    assert redact("cd /home/someone") == "cd /home/someone"
    assert redact("password hunter2-hunter2") == "password ***"  # a real secret-named variable still is
