"""The shape of the package: no import cycle (imports inside functions count) and one exception root."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import vllm_paddle_ocr.backends
import vllm_paddle_ocr.plugin
from vllm_paddle_ocr.plugin.errors import VllmPaddleOcrError

ROOT = Path(__file__).resolve().parents[2]
# Where each import name's files live (the package-dir mapping of pyproject.toml).
SOURCES = {"vllm_paddle_ocr.plugin": ROOT / "plugin", "vllm_paddle_ocr.backends": ROOT / "backends"}


def modules() -> dict[str, Path]:
    """Every module of the package by its import name."""
    found = {}
    for package, directory in SOURCES.items():
        for path in directory.rglob("*.py"):
            parts = list(path.relative_to(directory).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's own modules a module imports, anywhere in its body (functions included)."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # `from pkg import mod` needs the module; `from mod import name` needs mod itself.
            for alias in node.names:
                submodule = f"{module}.{alias.name}"
                targets.add(submodule if submodule in known else module)
    return {target for target in targets if target in known and target != name}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as the list of modules around it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_the_package():
    found = modules()
    graph = {name: imports_of(name, path, set(found)) for name, path in found.items()}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_contract_imports_no_backend_module():
    found = modules()
    for name, path in found.items():
        if name.startswith("vllm_paddle_ocr.plugin"):
            backends = {t for t in imports_of(name, path, set(found)) if t.startswith("vllm_paddle_ocr.backends")}
            assert not backends, f"{name} imports {sorted(backends)}"


def test_every_exception_class_derives_from_the_one_root():
    defined = []
    for package in (vllm_paddle_ocr.plugin, vllm_paddle_ocr.backends):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            module = importlib.import_module(info.name)
            for _, cls in inspect.getmembers(module, inspect.isclass):
                if cls.__module__ == module.__name__ and issubclass(cls, BaseException):
                    defined.append(cls)
    assert len(defined) > 15
    strays = [f"{cls.__module__}.{cls.__qualname__}" for cls in defined if not issubclass(cls, VllmPaddleOcrError)]
    assert strays == []


def test_planning_imports_no_proxy_module():
    """Planning runs in `plan` on any machine: it decides from files and installed packages, never by loading the proxy."""
    found = modules()
    planning = "vllm_paddle_ocr.backends.vllm_paddle_ocr.planning"
    proxy = "vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy"
    for name, path in found.items():
        if name.startswith(planning):
            reached = {t for t in imports_of(name, path, set(found)) if t.startswith(proxy)}
            assert not reached, f"{name} imports {sorted(reached)}"
