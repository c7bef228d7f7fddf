"""The code's shape, read statically with `ast` (nothing is imported): no import cycles, the library
(learners/__init__.py, errors.py, learner/) needs nothing from the harness nor beyond torch, transformers and
safetensors, and no function is longer than 60 lines."""

import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "learners"
MAX_FUNCTION_LINES = 60
# huggingface_hub: transformers requires it, so the library's push_to_hub (learner/hub.py) adds nothing to install.
LIBRARY_DEPENDENCIES = {"torch", "transformers", "safetensors", "huggingface_hub"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_names(path: Path, name: str) -> set[str]:
    """Every module `path` imports, at any depth (function-level imports included), as absolute names.
    `from X import y` counts as importing X.y where X.y is a module of the package, else X."""
    known = modules()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            for alias in node.names:
                found.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in known else target)
    return found


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: {m for m in imported_names(path, name) if m in known} for name, path in known.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def is_library(name: str) -> bool:
    return name in ("learners", "learners.errors") or name == "learners.learner" or name.startswith("learners.learner.")


def test_the_graph_sees_relative_and_function_level_imports():
    graph = import_graph()
    assert "learners.harness.arguments" in graph["learners.harness.bench"]  # module level, relative
    assert "learners.harness.checkpoint" in graph["learners.harness.bench"]  # `from . import checkpoint` in a function
    assert "learners.harness.bench" in graph["learners.harness.cli"]  # function level
    assert "learners.errors" in graph["learners.learner.model"]  # `from ..errors import`
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_library_imports_nothing_from_the_harness():
    graph = import_graph()
    library = [name for name in graph if is_library(name)]
    assert "learners.learner.model" in library and "learners.harness.cli" not in library
    offenders = {name: sorted(m for m in graph[name] if not is_library(m)) for name in library}
    assert not {k: v for k, v in offenders.items() if v}, "library modules importing the harness"


def test_the_library_needs_only_torch_transformers_and_safetensors():
    """Beyond the standard library, what `pip install learners` (no extras) installs, and nothing else."""
    outside = {}
    for name, path in modules().items():
        if is_library(name):
            tops = {m.split(".")[0] for m in imported_names(path, name)}
            extra = tops - LIBRARY_DEPENDENCIES - set(sys.stdlib_module_names) - {"learners", "__future__"}
            if extra:
                outside[name] = sorted(extra)
    assert not outside, f"library modules importing packages beyond {sorted(LIBRARY_DEPENDENCIES)}: {outside}"


def long_functions(root: Path = PACKAGE) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    found.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_function_is_longer_than_60_lines():
    """Library and harness alike; nested functions count inside their parent too."""
    assert not long_functions(), "functions over 60 lines:\n" + "\n".join(long_functions())
