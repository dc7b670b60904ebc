"""launch/: the cluster launchers parse, match their schemas, and name only real ``distat`` commands and flags.

Docs drift silently: a renamed flag still reads well in a README. Every ``distat <subcommand> --flag`` written
in launch/ (shell, YAML, comments, Markdown code) is checked against the parser the CLI really builds, the Slurm
script is dry-run with stand-ins for srun/ray/distat (no Ray, no Slurm), and the manifests are held to the
invariants launch/README.md promises (shared storage at one path, secrets from Secrets, 127.0.0.1 binds).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from distat.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"
CLUSTER_YAML = LAUNCH / "ray-cluster.yaml"
RAYJOB_YAML = LAUNCH / "rayjob.yaml"
K8S_SHARED_YAML = LAUNCH / "k8s-shared.yaml"
SLURM_SH = LAUNCH / "slurm.sh"
README = LAUNCH / "README.md"
LAUNCH_FILES = [CLUSTER_YAML, RAYJOB_YAML, K8S_SHARED_YAML, SLURM_SH, README]


# --------------------------------------------------------------------------------------------------
# The CLI as argparse builds it


@dataclass(frozen=True)
class CliSpec:
    global_options: frozenset[str]
    subcommands: dict[str, frozenset[str]]  # subcommand -> its option strings


def cli_spec(parser: argparse.ArgumentParser | None = None) -> CliSpec:
    parser = parser or build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return CliSpec(frozenset(parser._option_string_actions),
                   {name: frozenset(sub._option_string_actions) for name, sub in subparsers.choices.items()})


# --------------------------------------------------------------------------------------------------
# Finding `distat ...` commands in text


@dataclass(frozen=True)
class Command:
    source: str
    line: int
    subcommand: str | None
    options: tuple[str, ...]  # option strings as written (without =value)
    args: tuple[str, ...]  # every token after the subcommand
    text: str


# `distat` as a command word: alone, or as .../bin/distat (not the end of a path such as /mnt/efs/distat)
_DISTAT = re.compile(r"(?:(?<=bin/)|(?<![\w/.=-]))distat(?=[ \t])")
# a command ends at the end of its line or at a shell/Markdown boundary
_END = re.compile(r"\n|;|&&|\|\||\||`|\)|\s#")
_OPTION = re.compile(r"^(--?[A-Za-z][\w-]*)")
_FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
_SPAN = re.compile(r"`([^`\n]+)`")


def _commands_in(text: str, source: str, line_of: Any, base: int = 0) -> Iterator[Command]:
    for match in _DISTAT.finditer(text):
        rest = text[match.end():]
        end = _END.search(rest)
        segment = rest[: end.start()] if end else rest
        tokens = segment.split()
        i = 0
        while i < len(tokens) and tokens[i].startswith("-"):  # global options such as -v
            i += 1
        sub = tokens[i] if i < len(tokens) else None
        after = tuple(tokens[i + 1:])
        options = tuple(m.group(1) for t in after if (m := _OPTION.match(t)))
        globals_ = tuple(m.group(1) for t in tokens[:i] if (m := _OPTION.match(t)))
        yield Command(source, line_of(base + match.start()), sub, globals_ + options, after,
                      "distat " + " ".join(tokens))


def find_commands(text: str, source: str = "<text>", markdown: bool = False) -> list[Command]:
    """Every ``distat ...`` command in ``text``: all of it for shell/YAML (comments included), only code
    (fenced blocks and inline spans) for Markdown, where prose may say "distat" in passing."""
    text = re.sub(r"\\\n[ \t]*", " ", text)  # shell line continuations

    def line_of(offset: int) -> int:
        return text.count("\n", 0, offset) + 1

    if not markdown:
        return list(_commands_in(text, source, line_of))
    found: list[Command] = []
    prose = text
    for block in _FENCE.finditer(text):
        found += _commands_in(block.group(1), source, line_of, block.start(1))
        prose = prose[: block.start()] + " " * (block.end() - block.start()) + prose[block.end():]
    for span in _SPAN.finditer(prose):
        found += _commands_in(span.group(1), source, line_of, span.start(1))
    return found


def command_problems(commands: list[Command], spec: CliSpec) -> list[str]:
    problems = []
    for cmd in commands:
        if cmd.subcommand is None:  # a bare word at the end of a line (a label value, say): no command
            continue
        where = f"{cmd.source}:{cmd.line}: {cmd.text!r}"
        if cmd.subcommand not in spec.subcommands:
            problems.append(f"{where}: {cmd.subcommand!r} is not a distat subcommand "
                            f"({', '.join(sorted(spec.subcommands))})")
            continue
        known = spec.subcommands[cmd.subcommand] | spec.global_options
        for option in cmd.options:
            if option not in known:
                problems.append(f"{where}: `distat {cmd.subcommand}` has no option {option} "
                                f"(it has {', '.join(sorted(spec.subcommands[cmd.subcommand]))})")
        for i, token in enumerate(cmd.args[:-1]):
            if token == "--storage" and "://" in cmd.args[i + 1]:
                problems.append(f"{where}: --storage must be a shared filesystem path: distat writes trial "
                                "folders with plain file I/O, a URI becomes a local folder")
    return problems


_PATH = re.compile(r"(?<![\w./~-])((?:search_spaces|launch|scripts|configs|tests|distat)/[\w./-]*\w\.(?:ya?ml|sh|md|py))")


def path_problems(text: str, source: str) -> list[str]:
    return [f"{source}: {m.group(1)} does not exist" for m in _PATH.finditer(text) if not (ROOT / m.group(1)).exists()]


def launch_commands() -> list[Command]:
    found = []
    for path in LAUNCH_FILES:
        found += find_commands(path.read_text(), path.relative_to(ROOT).as_posix(), markdown=path.suffix == ".md")
    return found


def yaml_strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from yaml_strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from yaml_strings(value)


# --------------------------------------------------------------------------------------------------
# The checker itself can fail


def test_checker_catches_typos_and_drift():
    spec = cli_spec()
    text = "\n".join([
        "distat search search_spaces/demo.yaml --storrage /shared",          # flag typo
        "distat serach search_spaces/demo.yaml",                              # subcommand typo
        "cd x && distat resume /shared/searches/demo --storage /shared",      # flag of another subcommand
        "distat search s.yaml --address auto \\\n    --trackinguri http://x",  # continued line
        "distat search s.yaml --storage s3://bucket/searches",                # not a filesystem path
        "distat -v search s.yaml --address auto --storage /shared --tracking-uri http://x --cache-dir /c",  # ok
        "  .venv/bin/distat pareto /shared/searches/demo  # comment --not-a-flag",  # ok
    ])
    problems = command_problems(find_commands(text), spec)
    assert len(problems) == 5, "\n".join(problems)
    for needle in ("--storrage", "'serach'", "`distat resume` has no option --storage", "--trackinguri", "s3://"):
        assert any(needle in p for p in problems), (needle, problems)


def test_checker_reads_markdown_code_only():
    spec = cli_spec()
    md = "Prose may say distat writes files.\n\n```bash\ndistat search x.yaml --adress auto\n```\n\n" \
         "Inline: `distat resume DIR --address auto`, `distat pareto DIR --csv out.csv`.\n"
    problems = command_problems(find_commands(md, markdown=True), spec)
    assert len(problems) == 2, problems
    assert any("--adress" in p for p in problems) and any("--csv" in p for p in problems)


def test_cli_spec_sees_the_real_parser():
    spec = cli_spec()
    assert {"search", "resume", "pareto", "resources"} <= set(spec.subcommands)
    assert {"--storage", "--tracking-uri", "--address", "--cache-dir"} <= spec.subcommands["search"]


def test_path_checker_flags_missing_files():
    assert path_problems("see search_spaces/no_such_space.yaml and launch/slurm.sh", "x") == [
        "x: search_spaces/no_such_space.yaml does not exist"]


# --------------------------------------------------------------------------------------------------
# Every launch file


def test_launch_files_exist():
    missing = [p.name for p in LAUNCH_FILES if not p.is_file()]
    assert not missing, missing


@pytest.mark.parametrize("path", sorted(LAUNCH.glob("*.yaml")), ids=lambda p: p.name)
def test_yaml_parses(path):
    docs = list(yaml.safe_load_all(path.read_text()))
    assert docs and all(isinstance(d, dict) and d for d in docs), f"{path.name}: every document must be a mapping"
    if path != K8S_SHARED_YAML:
        assert len(docs) == 1, f"{path.name}: one document expected"
        assert yaml.safe_load(path.read_text()) == docs[0]


def test_every_distat_command_in_launch_is_real():
    commands = launch_commands()
    for path in (CLUSTER_YAML, RAYJOB_YAML):  # folded YAML strings (entrypoints) as the shell sees them
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            for s in yaml_strings(doc):
                commands += find_commands(s, f"{path.relative_to(ROOT)} (document {i}, parsed)")
    problems = command_problems(commands, cli_spec())
    assert not problems, "\n".join(problems)
    # not vacuous: the launchers do run searches and resumes on a cluster address
    by_file: dict[str, set[tuple[str | None, str]]] = {}
    for c in commands:
        for option in (*c.options, ""):
            by_file.setdefault(c.source.split(" ")[0], set()).add((c.subcommand, option))
    for name in ("launch/ray-cluster.yaml", "launch/rayjob.yaml", "launch/slurm.sh", "launch/README.md"):
        found = by_file.get(name, set())
        assert ("search", "--address") in found and ("resume", "--address") in found, (name, sorted(found))
    for name in ("launch/rayjob.yaml", "launch/slurm.sh"):
        assert {("search", "--storage"), ("search", "--tracking-uri")} <= by_file[name], name


def test_every_mentioned_repo_file_exists():
    problems = []
    for path in LAUNCH_FILES:
        problems += path_problems(path.read_text(), path.relative_to(ROOT).as_posix())
    assert not problems, "\n".join(problems)
    mentioned = {m.group(1) for p in LAUNCH_FILES for m in _PATH.finditer(p.read_text())}
    assert "search_spaces/adaptive_pgd.yaml" in mentioned


def test_services_bind_localhost():
    for path in (CLUSTER_YAML, SLURM_SH):
        text = path.read_text()
        assert "0.0.0.0" not in text, f"{path.name} binds a service to all interfaces"
        hosts = re.findall(r"--dashboard-host[= ](\S+)", text)
        assert hosts, f"{path.name}: set --dashboard-host explicitly"
        for host in hosts:
            assert host in ("127.0.0.1", '"$dashboard_host"'), (path.name, host)
    assert "${DISTAT_DASHBOARD_HOST:-127.0.0.1}" in SLURM_SH.read_text()
    for host in re.findall(r"mlflow server --host (\S+)", CLUSTER_YAML.read_text()):
        assert host == "127.0.0.1"


# --------------------------------------------------------------------------------------------------
# Ray cluster launcher


def _ray_schema() -> Path | None:
    try:
        import ray
    except ImportError:
        return None
    path = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
    return path if path.is_file() else None


def _cluster() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_cluster_yaml_matches_rays_schema():
    cfg = _cluster()
    schema = _ray_schema()
    if schema is None:
        assert {"cluster_name", "provider", "available_node_types", "head_node_type"} <= set(cfg)
        assert cfg["provider"].get("type")
        return
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(cfg, json.loads(schema.read_text()))


def test_cluster_yaml_passes_rays_own_validation():
    """Ray's launcher fills in the provider defaults and validates the result, as `ray up` does first."""
    try:
        from ray.autoscaler._private.util import prepare_config, validate_config
    except ImportError:  # a private API: its absence is no reason to fail
        pytest.skip("ray.autoscaler._private.util is not available")
    validate_config(prepare_config(_cluster()))


def test_cluster_yaml_nodes_gpus_and_storage():
    cfg = _cluster()
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    workers = {name: t for name, t in types.items() if name != cfg["head_node_type"]}
    gpu_types = [t for t in workers.values() if t["resources"].get("GPU", 0) >= 1]
    assert gpu_types, "no GPU worker type"
    for t in workers.values():
        assert t.get("min_workers", 0) <= t.get("max_workers", 0) <= cfg["max_workers"]
    head_cmds = " ".join(cfg["head_setup_commands"])
    worker_cmds = " ".join(cfg["worker_setup_commands"] + [c for t in workers.values()
                                                           for c in t.get("worker_setup_commands", [])])
    # GPU nodes need a CUDA build of torch, pinned to the project's torch version, from PyTorch's CUDA index
    assert re.search(r"torch==[\d.]+ --index-url https://download\.pytorch\.org/whl/cu\d+", worker_cmds)
    assert "torch.cuda.is_available()" in worker_cmds
    for cmds in (head_cmds, worker_cmds):
        for m in re.finditer(r"pip install[^&;]*\btorch==", cmds):
            assert "--index-url" in cmds[m.start():].split("&&")[0], "torch installed without choosing its build"
    # shared storage: the cache and every --storage named in the file live on the shared mount
    common = " ".join(cfg["setup_commands"])
    mount = re.search(r"mountpoint -q (\S+)", common).group(1)
    assert re.search(rf"DISTAT_CACHE_DIR={re.escape(mount)}/", common)
    storages = re.findall(r"--storage (\S+)", CLUSTER_YAML.read_text())
    assert storages and all(s.startswith(mount + "/") for s in storages), storages
    assert all(s.startswith(mount + "/") for s in re.findall(r"distat resume (\S+)", CLUSTER_YAML.read_text()))
    assert "--dashboard-host=127.0.0.1" in " ".join(cfg["head_start_ray_commands"])


# --------------------------------------------------------------------------------------------------
# KubeRay


def _rayjob() -> dict[str, Any]:
    return yaml.safe_load(RAYJOB_YAML.read_text())


def _pod_templates(job: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = job["spec"]["rayClusterSpec"]
    return [cluster["headGroupSpec"]["template"], *(g["template"] for g in cluster["workerGroupSpecs"])]


def test_rayjob_shape():
    job = _rayjob()
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec.get("ttlSecondsAfterFinished"), int)
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == importlib.metadata.version("ray"), "rayVersion (and the image) must match Ray"
    assert cluster.get("authOptions", {}).get("mode") == "token"
    head = cluster["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP"
    assert head["template"]["spec"]["containers"]
    gpu_groups = [g for g in cluster["workerGroupSpecs"]
                  if any(int(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0)) >= 1
                         for c in g["template"]["spec"]["containers"])]
    assert gpu_groups, "no GPU worker group"
    for g in cluster["workerGroupSpecs"]:
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], g["groupName"]


def test_rayjob_entrypoint_runs_or_resumes_the_search():
    spec = _rayjob()["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["bash", "-c"] and len(argv) == 3, "KubeRay pastes the entrypoint into a shell: wrap it"
    script = argv[2]
    subprocess.run(["bash", "-n", "-c", script], check=True)
    assert "distat search search_spaces/adaptive_pgd.yaml --address auto" in script
    name = yaml.safe_load((ROOT / "search_spaces/adaptive_pgd.yaml").read_text())["name"]
    assert f'"$DISTAT_STORAGE/{name}/distat_search.json"' in script
    assert f'distat resume "$DISTAT_STORAGE/{name}" --address auto' in script
    assert '--storage "$DISTAT_STORAGE"' in script and '--tracking-uri "$MLFLOW_TRACKING_URI"' in script


def test_rayjob_storage_is_one_shared_pvc_and_secrets_come_from_secrets():
    job = _rayjob()
    pvc, policy = list(yaml.safe_load_all(K8S_SHARED_YAML.read_text()))
    assert pvc["kind"] == "PersistentVolumeClaim" and "ReadWriteMany" in pvc["spec"]["accessModes"]
    mounts, envs = set(), []
    for template in _pod_templates(job):
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in template["spec"]["volumes"]
                  if "persistentVolumeClaim" in v}
        assert pvc["metadata"]["name"] in claims.values()
        for container in template["spec"]["containers"]:
            mounts |= {m["mountPath"] for m in container["volumeMounts"] if m["name"] in claims}
            envs += container.get("env", [])
    assert len(mounts) == 1, f"the shared volume must sit at one path in every pod: {mounts}"
    (mount,) = mounts
    for env in envs:
        if env["name"] in ("DISTAT_STORAGE", "DISTAT_CACHE_DIR"):
            assert env["value"].startswith(mount + "/"), env
        if re.search(r"TOKEN|PASSWORD|SECRET|KEY|TRACKING_URI", env["name"]):
            assert "value" not in env and "secretKeyRef" in env.get("valueFrom", {}), env["name"]
    head_env = {e["name"] for e in _pod_templates(job)[0]["spec"]["containers"][0]["env"]}
    assert {"DISTAT_STORAGE", "DISTAT_CACHE_DIR", "MLFLOW_TRACKING_URI"} <= head_env
    # the NetworkPolicy admits the pods it is meant for
    assert policy["kind"] == "NetworkPolicy"
    selector = policy["spec"]["podSelector"]["matchLabels"]
    templates = [*_pod_templates(job), job["spec"]["submitterPodTemplate"]]
    for template in templates:
        labels = template.get("metadata", {}).get("labels", {})
        assert selector.items() <= labels.items(), labels


# --------------------------------------------------------------------------------------------------
# Slurm


def test_slurm_script_syntax_and_header():
    subprocess.run(["bash", "-n", str(SLURM_SH)], check=True)
    lines = SLURM_SH.read_text().splitlines()
    assert lines[0].startswith("#!") and "bash" in lines[0]
    first_command = next(i for i, line in enumerate(lines) if line.strip() and not line.lstrip().startswith("#"))
    late = [line for line in lines[first_command:] if line.startswith("#SBATCH")]
    assert not late, f"sbatch ignores #SBATCH lines after the first command: {late}"
    assert lines[first_command] == "set -euo pipefail"


def test_slurm_script_shellcheck():
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed")
    result = subprocess.run([shellcheck, str(SLURM_SH)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


_STUBS = {
    # srun: log, drop the options (and -w NODE), run the command on "this node"
    "srun": 'echo "srun $*" >> "$STUB_LOG"\n'
            'while [ $# -gt 0 ]; do case "$1" in -w) shift 2 ;; -*) shift ;; *) break ;; esac; done\n'
            'exec "$@"\n',
    "scontrol": 'printf "%s\\n" $STUB_NODES\n',
    "hostname": 'echo "fe80::1 127.0.1.1 10.1.2.3 172.17.0.1"\n',
    # ray: a token, a healthy status, and `ray start --block` that lives until the script ends
    "ray": 'echo "ray $*" >> "$STUB_LOG"\n'
           'case "$1" in get-auth-token) printf stub-token ;; start) exec sleep 60 ;; esac\n',
    "distat": 'python -c \'import json, os, sys; print(json.dumps({"argv": sys.argv[1:], "env": {k: os.environ.get(k) '
              'for k in ("RAY_AUTH_TOKEN", "RAY_AUTH_MODE", "DISTAT_CACHE_DIR")}}))\' "$@" >> "$STUB_DRIVER_LOG"\n'
              'if [ -n "${STUB_DRIVER_WAIT:-}" ]; then\n'
              '  trap \'echo interrupted >> "$STUB_DRIVER_LOG"; exit 130\' INT\n'
              '  : > "$STUB_DRIVER_WAIT"\n'
              '  for _ in $(seq 200); do sleep 0.1; done\n'
              'fi\n'
              'exit "${STUB_DRIVER_RC:-0}"\n',
    # python: the node-join check talks to Ray: skip it; anything else is the real interpreter
    "python": 'if [ "$1" = - ]; then echo "join $2 $3" >> "$STUB_LOG"; cat > /dev/null; exit 0; fi\n'
              f'exec {shlex.quote(sys.executable)} "$@"\n',
}


@pytest.fixture
def slurm_env(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    for name, body in _STUBS.items():
        stub = venv / "bin" / name
        stub.write_text("#!/usr/bin/env bash\n" + body)
        stub.chmod(0o755)
    (tmp_path / "home").mkdir()
    return {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path / "home"), "LANG": "C.UTF-8",
        "STUB_LOG": str(tmp_path / "calls.log"), "STUB_DRIVER_LOG": str(tmp_path / "driver.log"),
        "STUB_NODES": "gpu01 gpu02",
        "SLURM_JOB_ID": "4242", "SLURM_SUBMIT_DIR": str(ROOT), "SLURM_JOB_NODELIST": "gpu[01-02]",
        "SLURM_CPUS_PER_TASK": "16", "SLURM_GPUS_PER_NODE": "a100:2",
        "DISTAT_VENV": str(venv), "DISTAT_ROOT": str(tmp_path / "shared"), "DISTAT_JOIN_TIMEOUT": "20",
    }


def _run_slurm(env: dict[str, str], signal_after_start: bool = False) -> subprocess.CompletedProcess:
    # slurmstepd starts the batch script with default signal dispositions: so does this
    proc = subprocess.Popen(["bash", str(SLURM_SH)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        if signal_after_start:
            ready = Path(env["STUB_DRIVER_WAIT"])
            deadline = time.monotonic() + 60
            while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            proc.send_signal(signal.SIGUSR1)  # what `#SBATCH --signal=B:USR1@300` sends
        out, _ = proc.communicate(timeout=90)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(proc.args, proc.returncode, out)


def _driver_calls(env: dict[str, str]) -> list[dict[str, Any]]:
    lines = Path(env["STUB_DRIVER_LOG"]).read_text().splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


def test_slurm_dry_run_starts_ray_then_the_search(slurm_env):
    result = _run_slurm(slurm_env)
    assert result.returncode == 0, result.stdout
    calls = Path(slurm_env["STUB_LOG"]).read_text()
    head = re.search(r"^ray start --head .*$", calls, re.M).group(0)
    for arg in ("--node-ip-address=10.1.2.3", "--port=6379", "--num-cpus=16", "--num-gpus=2",
                "--dashboard-host=127.0.0.1", "--block"):
        assert arg in head.split(), (arg, head)
    worker_srun = re.search(r"^srun .*--exclude=gpu01 ray start .*$", calls, re.M).group(0)
    assert "--address=10.1.2.3:6379" in worker_srun and "--num-gpus=2" in worker_srun
    assert "join 10.1.2.3:6379 2" in calls
    (driver,) = _driver_calls(slurm_env)
    shared = slurm_env["DISTAT_ROOT"]
    assert driver["argv"] == ["search", "search_spaces/adaptive_pgd.yaml", "--address", "10.1.2.3:6379",
                              "--storage", f"{shared}/searches", "--tracking-uri", f"sqlite:///{shared}/mlflow.db",
                              "--cache-dir", f"{shared}/cache"]
    build_parser().parse_args(driver["argv"])  # the real CLI accepts exactly what the script runs
    assert driver["env"] == {"RAY_AUTH_TOKEN": "stub-token", "RAY_AUTH_MODE": "token",
                             "DISTAT_CACHE_DIR": f"{shared}/cache"}


def test_slurm_dry_run_resumes_and_stops_cleanly_before_the_time_limit(slurm_env, tmp_path):
    search_dir = Path(slurm_env["DISTAT_ROOT"]) / "searches" / "adaptive_pgd"
    search_dir.mkdir(parents=True)
    (search_dir / "distat_search.json").write_text("{}")
    env = {**slurm_env, "STUB_DRIVER_WAIT": str(tmp_path / "driver-started"), "STUB_NODES": "gpu01",
           "SLURM_JOB_NODELIST": "gpu01", "DISTAT_HEAD_IP": "10.9.9.9"}
    result = _run_slurm(env, signal_after_start=True)
    assert result.returncode == 130, result.stdout
    assert "resubmit" in result.stdout
    (driver,) = _driver_calls(env)
    assert driver["argv"] == ["resume", str(search_dir), "--address", "10.9.9.9:6379"]
    build_parser().parse_args(driver["argv"])
    assert Path(env["STUB_DRIVER_LOG"]).read_text().splitlines()[-1] == "interrupted"
    assert "--exclude" not in Path(env["STUB_LOG"]).read_text()  # one node: no worker step


def test_slurm_dry_run_driver_failure_is_the_job_status(slurm_env):
    result = _run_slurm({**slurm_env, "STUB_DRIVER_RC": "2"})
    assert result.returncode == 2 and "resubmit" in result.stdout
