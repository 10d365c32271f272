"""The three layers, enforced: library -> components -> application, nothing imports upward, and
the two components (producers, consumers) never import each other.

Every module of the package is parsed (ast, so imports inside functions and under TYPE_CHECKING
count too) and each import is checked against the layer table in `LAYERS`, which is the one
written in docs/architecture.md.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import streamrl

REPO = Path(__file__).resolve().parents[2]
# The package and the checkout's folders that install as streamrl.<folder> (setup.py).
FOLDERS = {"streamrl": "streamrl"} | {f: f"streamrl.{f}" for f in streamrl.FOLDERS}

LIBRARY, COMPONENT, APPLICATION = 0, 1, 2
NAMES = {LIBRARY: "library", COMPONENT: "component", APPLICATION: "application"}
# Longest prefix wins; anything under streamrl not listed is the library.
LAYERS = {
    "streamrl": LIBRARY,
    "streamrl.producers": COMPONENT,
    "streamrl.consumers": COMPONENT,
    "streamrl.run": APPLICATION,
    "streamrl.launch": APPLICATION,
    "streamrl.replay": APPLICATION,
    "streamrl.audit": APPLICATION,
    "streamrl.report": APPLICATION,
    "streamrl.commands": APPLICATION,
    "streamrl.cli": APPLICATION,
}
COMPONENTS = ("streamrl.producers", "streamrl.consumers")


def _prefix(module: str, table: dict[str, int] | tuple[str, ...]) -> str | None:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in table:
            return ".".join(parts[:n])
    return None


def layer_of(module: str) -> int:
    prefix = _prefix(module, LAYERS)
    assert prefix is not None, module
    return LAYERS[prefix]


def module_files(root: Path) -> dict[str, Path]:
    """Every module of the package under `root`, by its installed dotted name."""
    modules = {}
    for folder, package in FOLDERS.items():
        for path in sorted((root / folder).rglob("*.py")):
            rel = path.relative_to(root / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            modules[".".join([package, *parts])] = path
    return modules


def imports_of(module: str, path: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every import in the file, relative ones made absolute."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import sub` imports the submodule when there is one
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def violations(root: Path) -> list[str]:
    """One line per import that breaks the layering, naming the file, line and import."""
    modules = module_files(root)
    bad = []
    for module, path in modules.items():
        mine = layer_of(module)
        own_component = _prefix(module, COMPONENTS)
        for line, target in imports_of(module, path):
            if not target.startswith("streamrl.") and target != "streamrl":
                continue
            while target not in modules and "." in target:  # `from m import name` -> m
                target = target.rpartition(".")[0]
            theirs = layer_of(target)
            where = f"{path.relative_to(root)}:{line}: {module} imports {target}"
            if theirs > mine:
                bad.append(f"{where} ({NAMES[mine]} imports {NAMES[theirs]}: upward)")
            other = _prefix(target, COMPONENTS)
            if own_component and other and other != own_component:
                bad.append(f"{where} (component imports the other component)")
    return bad


def test_nothing_imports_upward() -> None:
    bad = violations(REPO)
    assert not bad, "layering violations (docs/architecture.md, 'Layers'):\n" + "\n".join(bad)


def test_every_module_is_in_a_layer_the_docs_name() -> None:
    """The layer table here is the one docs/architecture.md draws."""
    text = (REPO / "docs" / "architecture.md").read_text()
    folders = {package: folder for folder, package in FOLDERS.items()}
    for prefix in LAYERS:
        head = _prefix(prefix, tuple(folders))
        path = folders[head] + prefix.removeprefix(head).replace(".", "/")
        assert path in text, f"docs/architecture.md's layer drawing lacks {path}"
    assert len(module_files(REPO)) > 100


def _plant(tmp_path: Path, folder: str, name: str, source: str) -> Path:
    for f in FOLDERS:  # a copy of the tree's modules, without their contents
        for path in (REPO / f).rglob("*.py"):
            target = tmp_path / path.relative_to(REPO)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch()
    planted = tmp_path / folder / name
    planted.write_text(source)
    return planted


@pytest.mark.parametrize(("folder", "name", "source", "message"), [
    ("streamrl/log", "planted.py", "from streamrl.run.driver import start_run\n",
     "streamrl/log/planted.py:1: streamrl.log.planted imports streamrl.run.driver "
     "(library imports application: upward)"),
    ("schemas", "planted.py", "def f():\n    import streamrl.producers.worker\n",
     "schemas/planted.py:2: streamrl.schemas.planted imports streamrl.producers.worker "
     "(library imports component: upward)"),
    ("producers", "planted.py", "from ..consumers.trainer import loop\n",
     "producers/planted.py:1: streamrl.producers.planted imports streamrl.consumers.trainer.loop"
     " (component imports the other component)"),
    ("consumers/trainer", "planted.py", "from streamrl.launch import supervisor\n",
     "imports streamrl.launch.supervisor (component imports application: upward)"),
])
def test_a_planted_upward_import_is_named(tmp_path: Path, folder: str, name: str, source: str,
                                          message: str) -> None:
    _plant(tmp_path, folder, name, source)
    bad = violations(tmp_path)
    assert len(bad) == 1 and message in bad[0], bad
