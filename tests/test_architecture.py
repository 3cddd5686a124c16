"""The packages import each other in one direction only (docs/architecture.md).

A unit is a sub-package (`transcription.streaming`) or a top-level module
(`transcription.models`); every import counts, also inside functions and under
TYPE_CHECKING.
"""

import ast
import itertools
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APPS = ("accounts", "transcription", "voiceproject")


def unit(module: str) -> str:
    parts = module.split(".")
    if parts[0] in ("transcription", "voiceproject") and len(parts) > 1:
        return ".".join(parts[:2])
    return parts[0]


def module_of(path: Path) -> str:
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    return name.removesuffix(".__init__")


def exists(unit_name: str) -> bool:
    path = ROOT.joinpath(*unit_name.split("."))
    return path.is_dir() or path.with_suffix(".py").exists()


def import_graph() -> dict[str, dict[str, str]]:
    """unit → {unit it imports: one place that does it}."""
    graph: dict[str, dict[str, str]] = defaultdict(dict)
    for app in APPS:
        for path in (ROOT / app).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            source = unit(module_of(path))
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    names = [node.module] + [
                        f"{node.module}.{alias.name}" for alias in node.names
                    ]
                elif isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                else:
                    continue
                for name in names:
                    target = unit(name)
                    if name.startswith(APPS) and target != source and exists(target):
                        graph[source].setdefault(target, f"{path.name}: {name}")
    return graph


def cycle_through(graph: dict[str, dict[str, str]], start: str) -> list[str] | None:
    """A path start → … → start, if there is one."""
    stack, seen = [(start, [start])], set()
    while stack:
        node, path = stack.pop()
        for target in graph.get(node, {}):
            if target == start:
                return [*path, start]
            if target not in seen:
                seen.add(target)
                stack.append((target, [*path, target]))
    return None


def test_no_package_imports_one_that_imports_it_back():
    graph = import_graph()
    assert "transcription.streaming" in graph  # the graph was read
    cycles = []
    for start in sorted(graph):
        if (path := cycle_through(graph, start)) is not None:
            steps = [graph[a][b] for a, b in itertools.pairwise(path)]
            cycles.append(" → ".join(path) + f" ({'; '.join(steps)})")
    assert cycles == []


def test_a_cycle_is_found():
    graph = {"a": {"b": "a.py"}, "b": {"c": "b.py"}, "c": {"a": "c.py"}}
    assert cycle_through(graph, "a") == ["a", "b", "c", "a"]
    assert cycle_through({"a": {"b": "a.py"}}, "a") is None
