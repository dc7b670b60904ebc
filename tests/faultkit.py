"""Fault injection on real local Ray clusters, shared by the fault tests and ``benchmarks/faults.py``.

:class:`LocalCluster` starts Ray nodes on this machine with ``ray start --block``, each in its own process
group and under its own ``--temp-dir`` and ports, so that stopping it (SIGTERM, then SIGKILL, to those
process groups only) never touches another Ray on the machine. A search driver (``distat search --address``)
runs as another process group: SIGKILLing it leaves the cluster running, as a lost driver leaves a real one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from helpers import free_port

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, poll: float = 0.2,
             alive: subprocess.Popen | None = None) -> Any:
    """Poll ``predicate`` until it returns something truthy (returned); fail after ``timeout`` seconds, or
    as soon as the process ``alive`` has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if alive is not None and alive.poll() is not None:
            raise AssertionError(f"process {alive.args[:4]} exited ({alive.returncode}) while waiting for {what}")
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _stop_group(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM the process group led by ``proc`` (started with ``start_new_session``), SIGKILL what is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                proc.poll()
                return
            proc.poll()
            time.sleep(0.2)


class LocalCluster:
    """Ray nodes on this machine: ``nodes`` maps a node name to its CPU count; each node also gets a custom
    resource ``node_<name>: 1`` so that its Ray node id can be told from the other's.

    ``with LocalCluster({"head": 1, "worker": 1}) as cluster: ... cluster.address ... cluster.node_ids``
    """

    def __init__(self, nodes: dict[str, float], object_store_mb: int = 200) -> None:
        self.nodes = nodes
        self.object_store = object_store_mb * 1024 * 1024
        # short: Ray's Unix sockets live under it (108-byte path limit)
        self.root = Path(tempfile.mkdtemp(prefix="ray_faults_", dir="/tmp"))
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.procs: dict[str, subprocess.Popen] = {}
        self.node_ids: dict[str, str] = {}  # node name -> Ray node id

    def _start_node(self, name: str, cpus: float, head: bool) -> None:
        cmd = [str(BIN / "ray"), "start", "--block", "--disable-usage-stats", "--node-ip-address", "127.0.0.1",
               f"--num-cpus={cpus}", f"--resources={json.dumps({f'node_{name}': 1})}",
               f"--object-store-memory={self.object_store}", f"--temp-dir={self.root}",
               f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}"]
        if head:
            cmd += ["--head", f"--port={self.port}", "--include-dashboard=false", f"--dashboard-port={free_port()}"]
        else:
            cmd += [f"--address={self.address}"]
        log = open(self.root / f"node_{name}.log", "w")  # noqa: SIM115 - closed with the process
        self.procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                            env=self._ray_env())

    def start(self) -> LocalCluster:
        names = list(self.nodes)
        try:
            self._start_node(names[0], self.nodes[names[0]], head=True)
            for name in names[1:]:
                wait_for(lambda: _listening(self.port), 60, "the Ray head", alive=self.procs[names[0]])
                self._start_node(name, self.nodes[name], head=False)
            self.node_ids = self._probe_nodes(len(names))
        except BaseException as e:
            logs = "\n".join(f"--- {p.name}\n" + p.read_text()[-2000:] for p in sorted(self.root.glob("node_*.log")))
            self.stop()
            raise AssertionError(f"the Ray cluster did not start: {e}\n{logs}") from e
        return self

    def _probe_nodes(self, expected: int, timeout: float = 45) -> dict[str, str]:
        code = (f"import json, ray; ray.init(address={self.address!r}, log_to_driver=False); "
                "print(json.dumps([[n['NodeID'], n['Resources']] for n in ray.nodes() if n['Alive']]))")
        deadline = time.monotonic() + timeout
        found: dict[str, str] = {}
        while time.monotonic() < deadline:
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                                 env=self._ray_env())
            if out.returncode == 0:
                nodes = json.loads(out.stdout.strip().splitlines()[-1])
                found = {name.removeprefix("node_"): node_id for node_id, res in nodes
                         for name in res if name.startswith("node_") and name.removeprefix("node_") in self.nodes}
                if len(found) == expected:
                    return found
            time.sleep(1)
        raise AssertionError(f"the Ray cluster at {self.address} did not come up with {expected} nodes "
                             f"(found {found}); logs in {self.root}")

    def _ray_env(self) -> dict[str, str]:
        # RAY_TMPDIR: nothing of this cluster lands in /tmp/ray. RAY_AUTH_MODE: `ray start --head` turns token
        # authentication on, while a joining node or a driver left at the default does not send the token
        return {**os.environ, "RAY_TMPDIR": str(self.root), "RAY_AUTH_MODE": "token"}

    def env(self) -> dict[str, str]:
        """Environment for a driver of this cluster."""
        return {**self._ray_env(), "PYTHONPATH": str(REPO)}

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):  # workers first, the head last
            _stop_group(proc)
        self.procs = {}
        # Ray's worker processes run in sessions of their own: find them by the RAY_TMPDIR they inherited
        for pid in self._stragglers():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.root, ignore_errors=True)

    def _stragglers(self) -> list[int]:
        return [int(e.name) for e in Path("/proc").iterdir()
                if e.name.isdigit() and int(e.name) != os.getpid() and self.owns(int(e.name))]

    def owns(self, pid: int) -> bool:
        """Whether process ``pid`` is one of this cluster's (it inherited the cluster's RAY_TMPDIR)."""
        try:
            return f"RAY_TMPDIR={self.root}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            return False

    def kill(self, pid: int) -> bool:
        """SIGKILL ``pid`` if it is a live process of this cluster (never a recycled pid of someone else's)."""
        if not self.owns(pid):
            return False
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return False
        return True

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


# --------------------------------------------------------------------------------------------------
# drivers: `distat search|resume` as separate process groups


def distat_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "distat.cli", *args]


def start_driver(args: list[str], cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    """``distat <args>`` in its own process group, output appended to ``log``."""
    out = open(log, "a")  # noqa: SIM115 - the child keeps it
    return subprocess.Popen(distat_cmd(*args), cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)


def drive(args: list[str], cwd: Path, env: dict[str, str], log: Path, poll: Callable[[], Any] | None = None,
          kill_after: float | None = None, timeout: float = 600) -> tuple[int | None, float]:
    """Run ``distat <args>`` as its own process group (output appended to ``log``), calling ``poll()`` every
    50 ms; SIGKILL it ``kill_after`` seconds in. Returns (its exit status, None when killed at ``kill_after``
    or -1 when it ran past ``timeout`` seconds and was killed; its wall time)."""
    t0 = time.monotonic()
    driver = start_driver(args, cwd, env, log)
    try:
        while driver.poll() is None:
            now = time.monotonic() - t0
            if kill_after is not None and now >= kill_after:
                kill_group(driver)
                return None, now
            if now > timeout:
                kill_group(driver)
                return -1, now
            if poll is not None:
                poll()
            time.sleep(0.05)
    finally:
        if driver.poll() is None:  # poll() raised
            kill_group(driver)
    return driver.returncode, time.monotonic() - t0


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL a process group started with ``start_new_session`` (a driver: not a cluster)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# --------------------------------------------------------------------------------------------------
# what a search leaves on disk


def finals(search_dir: Path) -> dict[str, dict[str, Any]]:
    """trial id -> final.json of every finished trial."""
    from distat.search.state import finished_trials

    return {trial_id: result.model_dump(mode="json") for trial_id, result in finished_trials(search_dir).items()}


def trial_pids(search_dir: Path) -> set[int]:
    """Every process a trial of this search ran in: Train workers and attack actors."""
    pids = {s["pid"] for t in search_dir.glob("trials/*") for s in starts(t)}
    for progress in search_dir.glob("trials/*/attack_progress.json"):
        try:
            pids |= {a["pid"] for a in json.loads(progress.read_text()).get("attack_actors", [])}
        except ValueError:  # being rewritten right now
            continue
    return pids


def starts(trial_dir: Path) -> list[dict[str, Any]]:
    """The trial's Train worker starts (``train_starts.jsonl``), oldest first."""
    path = trial_dir / "train_starts.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def optuna_history(search_dir: Path) -> list[dict[str, Any]]:
    """The Optuna study's trials as Tune's searcher snapshot (``searcher-state-*.pkl``, the newest by name, as
    Tune restores it) holds them: one dict per trial (state, params, values, user attributes)."""
    import pickle

    snaps = sorted(search_dir.glob("searcher-state-*.pkl"), key=lambda p: p.name)  # the one Tune restores
    assert snaps, f"no searcher snapshot in {search_dir}"
    with open(snaps[-1], "rb") as f:
        state = pickle.load(f)
    study = _find_study(state)
    return [{"number": t.number, "state": t.state.name, "params": dict(t.params), "values": t.values,
             "user_attrs": dict(t.user_attrs)} for t in study.trials]


def _find_study(obj: Any, depth: int = 0) -> Any:
    import optuna

    if isinstance(obj, optuna.Study):
        return obj
    if depth > 4:
        return None
    children = obj.values() if isinstance(obj, dict) else vars(obj).values() if hasattr(obj, "__dict__") else ()
    for child in children:
        found = _find_study(child, depth + 1)
        if found is not None:
            return found
    return None


# --------------------------------------------------------------------------------------------------
# a real MLflow tracking server that can be lost and brought back


class MlflowServer:
    """``mlflow server`` on 127.0.0.1 with its own SQLite store under ``root``; :meth:`kill` loses it (SIGKILL),
    :meth:`start` brings it back on the same port and store."""

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root = root
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> MlflowServer:
        import urllib.request

        self.root.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--backend-store-uri", f"sqlite:///{self.root / 'server.db'}", "--artifacts-destination",
             str(self.root / "art"), "--workers", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False

        try:
            wait_for(healthy, timeout, f"mlflow server on port {self.port}", poll=0.5, alive=self.proc)
        except AssertionError:
            self.stop()
            raise
        return self

    def kill(self) -> None:
        """Lose the server at once (SIGKILL to its process group)."""
        if self.proc is not None:
            kill_group(self.proc)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            _stop_group(self.proc)
            self.proc = None


class Gate:
    """A TCP forwarder on ``127.0.0.1:port`` in front of a server, to move its address from one server process to
    another at once. :meth:`open` forwards new connections to ``target_port``; :meth:`close` makes the address
    refuse connections (nothing listens) and cuts the connections it carried, as a killed server does.

    A server "lost and back" is then two real servers on one store: the first SIGKILLed behind a closed gate,
    the second started beforehand and reached by opening the gate again. Bringing it back takes no time, so a
    test does not depend on how long a server takes to start on a busy machine."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self._listener: socket.socket | None = None
        self._carried: set[socket.socket] = set()
        self._lock = threading.Lock()

    def open(self, target_port: int) -> Gate:
        self.close()
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener, target_port), daemon=True).start()
        return self

    def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
            listener.close()
        with self._lock:
            carried, self._carried = self._carried, set()
        for sock in carried:
            _cut(sock)

    def _accept(self, listener: socket.socket, target_port: int) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(("127.0.0.1", target_port), timeout=10)
            except OSError:
                client.close()  # the server behind is gone: the client sees its connection dropped
                continue
            upstream.settimeout(None)
            with self._lock:
                self._carried |= {client, upstream}
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            _cut(sock)
            with self._lock:
                self._carried.discard(sock)


def _cut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
