"""The log is the bottom layer: it imports nothing above it, and its modules import no cycle.
Every import statement counts, inside functions and under TYPE_CHECKING too: an import hidden
there to dodge a cycle is still a dependency."""

from __future__ import annotations

import ast
from pathlib import Path

import streamrl.log

LOG = Path(streamrl.log.__file__).parent
# All the log may import from the rest of streamrl: the stream names (a leaf module).
ALLOWED_OUTSIDE = {"streamrl.streams"}


def module_name(path: Path) -> str:
    parts = ("streamrl", "log", *path.relative_to(LOG).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(LOG.rglob("*.py"))}


def imports(path: Path) -> set[str]:
    """The streamrl modules `path` imports, wherever the statement sits."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0 and node.module, f"{path}: use absolute imports"
            found.add(node.module)
            # `from package import module` imports that module too
            found |= {f"{node.module}.{alias.name}" for alias in node.names} & MODULES.keys()
    return {name for name in found if name.split(".")[0] == "streamrl"}


def in_log(name: str) -> bool:
    return name == "streamrl.log" or name.startswith("streamrl.log.")


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    done: set[str] = set()

    def visit(path: list[str]) -> list[str] | None:
        for nxt in sorted(graph[path[-1]]):
            if nxt in path:
                return [*path[path.index(nxt):], nxt]
            if nxt not in done and (cycle := visit([*path, nxt])):
                return cycle
        done.add(path[-1])
        return None

    for start in sorted(graph):
        if start not in done and (cycle := visit([start])):
            return cycle
    return None


def test_the_log_imports_nothing_above_it() -> None:
    upward = sorted(f"{name} imports {dep}" for name, path in MODULES.items()
                    for dep in imports(path) if not in_log(dep) and dep not in ALLOWED_OUTSIDE)
    assert not upward, "the log is the bottom layer; pass what it needs in instead:\n" + "\n".join(
        upward)


def test_the_log_modules_import_no_cycle() -> None:
    graph = {name: (imports(path) & MODULES.keys()) - {name} for name, path in MODULES.items()}
    assert "streamrl.log.kafka.log" in graph and "streamrl.log.file.log" in graph
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])
