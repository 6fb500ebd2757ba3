"""The package is built in floors: a module imports only from its own floor or below, and no import
(at the top or inside a function) closes a circle. Every module imports on its own."""
import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "workbench"
FLOORS = {"errors": 1, "files": 1, "config": 1, "components": 1, "data": 2, "models": 2, "placement": 2, "resources": 2, "threads": 2, "prompts": 3,
          "generation": 4, "scoring": 4, "metrics": 4, "methods": 5, "checks": 5, "editing": 5, "evaluation": 6, "locality": 6,
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


# One interpreter loads the heavy third-party libraries once, then forks a child per module that imports
# that module first: each child starts with no workbench module loaded, which is what "imports alone"
# is about (a circle or a missing import inside the package), without paying torch's and transformers'
# start-up 40 times over (that took 70-135 s of the default run).
_ALONE = """
import importlib, os, sys
import pandas, torch, transformers, accelerate, peft  # noqa: F401  shared by the children, not by the package
assert not [m for m in sys.modules if m.startswith("workbench")]
failed, running = 0, 0
for name in sys.argv[1:]:
    if running == len(os.sched_getaffinity(0)):  # a child per core at a time
        failed += os.wait()[1] != 0
        running -= 1
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module("workbench." + name)
        except BaseException as e:
            print(f"{name}: {type(e).__name__}: {e}", file=sys.stderr)
            os._exit(1)
        os._exit(0)
    running += 1
while running:
    failed += os.wait()[1] != 0
    running -= 1
sys.exit(1 if failed else 0)
"""


def test_each_module_imports_alone_in_a_fresh_interpreter():
    run = subprocess.run([sys.executable, "-c", _ALONE, *sorted(modules())], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
