"""The import contract of the ``distat`` package, read from the source (every ``import`` / ``from`` statement,
those inside functions too, parsed with :mod:`ast`; nothing is imported to check it).

Layers, top to bottom; a module may import its own unit, any unit of a lower layer, and, within its layer,
only the units :data:`SAME_LAYER` allows it:

====  =========================================================================================================
 0    ``cli``          parses arguments, calls one ``app`` entry, prints
 1    ``app``          one entry per user action; starts Ray with one policy
 2    ``search``       wires the layers below together on Ray Tune/Train
 3    ``augment``, ``attacks``, ``training``, ``tracking``
 4    ``config``       the trial / search / attack settings; composes the methods' settings classes, so it
                       sits *above* ``methods`` (the issue's picture had it below: each method's settings class
                       lives in its method's module now, and config is what assembles them)
 5    ``methods``      the AT methods, each with its settings class
 6    ``data``, ``models``, ``resources``, ``settings``, ``atomic``, ``errors``, ``dicts``, ``scores``: the
                       foundation;
                       ``resources`` sits here (not beside ``attacks``) because it reads labelled data and
                       loads models to build the MLM and the calibration, and ``attacks`` reads its paths
====  =========================================================================================================

Within layer 3, from what the code does: ``augment`` (ADA attacks the training set of a victim it trains) may
import ``attacks`` and ``training``; ``attacks`` may import ``training`` (static sets are evaluated with the
training loop's batched evaluation); ``training`` imports none of the three (it knows nothing of the adversarial
examples it is given, nor of the attacks; mixup's mixing lives under ``methods``); ``tracking`` (MLflow, Pareto
front) imports none of them and none imports it. Within the foundation any import is allowed as long as the
units form no cycle (no cycle between any two units is allowed anywhere, nor between two modules). A new top-level module or package
must be added to :data:`LAYERS`: the test names it.

Also: ``methods/`` and ``training.py``, with everything they import from ``distat`` (transitively), never import
Ray, MLflow, Optuna or TextAttack; no module but ``distat/search/cluster.py`` imports Ray's private modules
(``ray._private``, any ``ray`` module path with a ``_`` component) or names Tune's ``experiment_state`` files.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "distat"

LAYERS: list[set[str]] = [
    {"cli"},
    {"app"},
    {"search"},
    {"augment", "attacks", "training", "tracking"},
    {"config"},
    {"methods"},
    {"data", "models", "resources", "settings", "atomic", "errors", "dicts", "scores", "paired"},
]
SAME_LAYER: dict[str, set[str]] = {
    "augment": {"attacks", "training"},
    "attacks": {"training"},
    "training": set(),
    "tracking": set(),
}
FOUNDATION = LAYERS[-1]
RAY_FREE = ("methods", "training")
FORBIDDEN_LIBS = ("ray", "mlflow", "optuna", "textattack")
RAY_INTERNALS_OWNER = "distat.search.cluster"


@cache
def _modules() -> dict[str, Path]:
    """Dotted module name -> source file, for every module of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


@cache
def _tree(module: str) -> ast.Module:
    path = _modules()[module]
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _imports(module: str) -> Iterator[tuple[int, str]]:
    """(line, imported module) for every import statement of ``module``, at any depth. ``from X import y`` gives
    ``X.y`` when that is a module of the package (``from distat import resources``), else ``X``."""
    seen = set()
    for found in _raw_imports(module):
        if found not in seen:
            seen.add(found)
            yield found


def _raw_imports(module: str) -> Iterator[tuple[int, str]]:
    is_package = _modules()[module].name == "__init__.py"
    for node in ast.walk(_tree(module)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against this module's package
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                yield node.lineno, sub if sub in _modules() else target


def _unit(module: str) -> str:
    """The layer unit of a ``distat`` module: its top-level package or module (``""`` for the root package)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _internal_edges() -> Iterator[tuple[str, int, str]]:
    """(importing module, line, imported distat module) for every import inside the package."""
    for module in _modules():
        for line, target in _imports(module):
            if target == "distat" or target.startswith("distat."):
                yield module, line, target


def _rank(unit: str) -> int:
    for rank, layer in enumerate(LAYERS):
        if unit in layer:
            return rank
    raise KeyError(unit)


def test_every_unit_has_a_layer():
    units = {_unit(m) for m in _modules()} - {""}
    unplaced = sorted(units - set().union(*LAYERS))
    assert not unplaced, f"add these distat modules/packages to a layer in tests/test_layers.py: {unplaced}"


def test_the_root_package_imports_nothing_of_distat():
    assert [t for m, _, t in _internal_edges() if m == "distat"] == []


def test_modules_import_only_their_layer_or_lower():
    wrong = []
    for module, line, target in _internal_edges():
        src, dst = _unit(module), _unit(target)
        if src == dst or dst == "" or src == "":
            continue
        try:
            r_src, r_dst = _rank(src), _rank(dst)
        except KeyError:
            continue  # test_every_unit_has_a_layer names it
        if r_dst > r_src or (r_dst == r_src and (src in FOUNDATION or dst in SAME_LAYER.get(src, set()))):
            continue
        how = "an upper layer" if r_dst < r_src else "its own layer, not allowed in SAME_LAYER"
        wrong.append(f"{_modules()[module].relative_to(PACKAGE.parent)}:{line} imports {target} ({dst}: {how})")
    assert not wrong, "layering broken:\n" + "\n".join(wrong)


def test_no_import_cycle_between_units():
    graph: dict[str, set[str]] = {}
    where: dict[tuple[str, str], str] = {}
    for module, line, target in _internal_edges():
        src, dst = _unit(module), _unit(target)
        if src and dst and src != dst:
            graph.setdefault(src, set()).add(dst)
            where.setdefault((src, dst), f"{_modules()[module].relative_to(PACKAGE.parent)}:{line}")
    cycles = []
    for a in sorted(graph):
        for b in sorted(graph[a]):
            if a < b and a in _reachable(graph, b):
                cycles.append(f"{a} -> {b} ({where[(a, b)]}) and {b} -> ... -> {a}")
    assert not cycles, "import cycles between units:\n" + "\n".join(cycles)


def test_no_import_cycle_between_modules_of_a_unit():
    """Inside a package too, modules import one way (resources/counterfit.py and vectors.py imported each
    other, one of them lazily, until the nearest-neighbour search got a module of its own). A package's
    ``__init__`` re-exporting its modules is not a cycle: edges into a package's own ``__init__`` are not
    counted."""
    graph: dict[str, set[str]] = {}
    for module, _, target in _internal_edges():
        if target in _modules() and target != module and not module.startswith(target + "."):
            graph.setdefault(module, set()).add(target)
    cycles = sorted(f"{a} <-> {b}" for a in graph for b in graph[a] if a < b and a in _reachable(graph, b))
    assert not cycles, "modules importing each other (directly or through others):\n" + "\n".join(cycles)


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def _closure(roots: list[str]) -> dict[str, str]:
    """Every distat module reachable by imports from ``roots`` -> the module that first imports it."""
    seen = {r: r for r in roots}
    todo = list(roots)
    while todo:
        module = todo.pop()
        for _, target in _imports(module):
            parts = target.split(".")
            for n in range(2, len(parts) + 1):  # importing a.b.c runs a.b's __init__ too
                name = ".".join(parts[:n])
                if name in _modules() and name not in seen:
                    seen[name] = module
                    todo.append(name)
    return seen


@pytest.mark.parametrize("unit", RAY_FREE)
def test_methods_and_training_never_import_ray_mlflow_optuna_or_textattack(unit):
    roots = [m for m in _modules() if _unit(m) == unit]
    assert roots
    found = []
    for module, via in sorted(_closure(roots).items()):
        for line, target in _imports(module):
            if target.split(".")[0] in FORBIDDEN_LIBS:
                chain = "" if module in roots else f" (reached from {via})"
                found.append(f"{_modules()[module].relative_to(PACKAGE.parent)}:{line} imports {target}{chain}")
    assert not found, f"distat.{unit} must know nothing of {', '.join(FORBIDDEN_LIBS)}:\n" + "\n".join(found)


def test_methods_and_training_load_without_ray_mlflow_optuna_or_textattack():
    """The same at run time, third-party imports included (a library pulling Ray in would show here)."""
    code = ("import sys, distat.training, distat.methods, distat.config; "
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN_LIBS!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=PACKAGE.parent)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def _docstrings(tree: ast.Module) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def test_only_search_cluster_reaches_ray_internals():
    assert RAY_INTERNALS_OWNER in _modules(), f"{RAY_INTERNALS_OWNER} is the one module for Ray's internals"
    found = []
    for module in _modules():
        if module == RAY_INTERNALS_OWNER:
            continue
        where = _modules()[module].relative_to(PACKAGE.parent)
        for line, target in _imports(module):
            parts = target.split(".")
            if parts[0] == "ray" and any(p.startswith("_") for p in parts[1:]):
                found.append(f"{where}:{line} imports {target}")
        tree = _tree(module)
        docs = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "_private":
                found.append(f"{where}:{node.lineno} uses ._private")
            elif (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs
                  and "experiment_state" in node.value):
                found.append(f"{where}:{node.lineno} names Tune's experiment_state files")
    assert not found, f"Ray internals outside {RAY_INTERNALS_OWNER}:\n" + "\n".join(found)
