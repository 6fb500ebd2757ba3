"""The package is built in floors: a module imports only from its own floor or below, and no import
(at the top or inside a function) closes a circle. Every module imports on its own."""
import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "workbench"
FLOORS = {"errors": 1, "config": 1, "components": 1, "data": 2, "models": 2, "placement": 2, "resources": 2, "threads": 2, "prompts": 3,
          "generation": 4, "scoring": 4, "metrics": 4, "methods": 5, "checks": 5, "train": 5, "evaluation": 6, "locality": 6,
          "runs": 7, "plots": 7, "mechanism": 7, "widgets": 7, "cli": 8}


def modules() -> dict[str, Path]:
    """``methods.ft`` -> its file, for every module but the package's own lazy __init__."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts != ("__init__",):
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Package modules that `name` imports anywhere in its file."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:  # `from . import data` imports a module; `from .data import x` a name
                full = f"{target}.{alias.name}".strip(".")
                found.add(full if full in known else target)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("workbench."):
            found.add(node.module.removeprefix("workbench."))
    return {m for m in found if m in known and m != name}


def floor(module: str) -> int:
    return FLOORS[module.split(".")[0]]


def test_every_import_goes_down_a_floor_and_none_closes_a_circle():
    mods = modules()
    graph = {name: imports(name, path, set(mods)) for name, path in mods.items()}
    assert set(FLOORS) == {m.split(".")[0] for m in mods}, "a new module needs a floor here"
    upward = [(a, b) for a, deps in graph.items() for b in deps if floor(b) > floor(a)]
    assert not upward, f"imports from a higher floor: {upward}"
    seen, stack = set(), []

    def visit(node):
        if node in stack:
            raise AssertionError(f"import circle: {' -> '.join(stack[stack.index(node):] + [node])}")
        if node not in seen:
            stack.append(node)
            for dep in sorted(graph[node]):
                visit(dep)
            stack.pop()
            seen.add(node)

    for node in sorted(graph):
        visit(node)


def test_each_module_imports_alone_in_a_fresh_interpreter():
    procs = {m: subprocess.Popen([sys.executable, "-c", f"import workbench.{m}"], stderr=subprocess.PIPE, text=True)
             for m in modules()}
    failed = {m: p.communicate()[1].strip().splitlines()[-1:] for m, p in procs.items() if p.wait() != 0}
    assert not failed, failed
