"""One namespace: the wheel installs `streamrl` and nothing else at the top of site-packages, so a
user's own `schemas` or `producers` package stays theirs; a checkout run in place maps exactly
the three folders `schemas/`, `producers/` and `consumers/` under `streamrl`."""

from __future__ import annotations

import json
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.helpers import REPO

FOLDERS = ("schemas", "producers", "consumers")


def _python_with_path(path: list[Path], code: str, cwd: Path) -> dict:
    """Run `code` in an isolated interpreter (no PYTHONPATH, no site: no .pth file puts the
    checkout back) whose sys.path is `path`, then the dependencies' site-packages, as they
    are; `code` prints one JSON object."""
    prelude = ("import sys, json\n"
               f"sys.path[:0] = {[str(p) for p in path]!r}\n"
               f"sys.path += {site.getsitepackages()!r}\n")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", prelude + code], capture_output=True,
                         text=True, timeout=120, cwd=cwd)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a copy of the checkout's files (git's view: tracked, or untracked
    and not ignored), so the build writes nothing into the checkout."""
    root = tmp_path_factory.mktemp("wheel")
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           capture_output=True, check=True, cwd=REPO).stdout.decode().split("\0")
    src = root / "src"
    for name in filter(None, files):
        if (REPO / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(root / "dist"), str(src)], check=True, capture_output=True,
                   timeout=300)
    [built] = (root / "dist").glob("streamrl-*.whl")
    return built


def test_the_wheel_holds_one_top_level_package(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names}
    dist_info = {t for t in top if t.endswith(".dist-info")}
    assert len(dist_info) == 1 and top - dist_info == {"streamrl"}, sorted(top)
    for folder in FOLDERS:
        assert f"streamrl/{folder}/__init__.py" in names


def test_installed_streamrl_leaves_the_users_schemas_and_producers_alone(
        wheel: Path, tmp_path: Path) -> None:
    target, user = tmp_path / "site", tmp_path / "user"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(target), str(wheel)], check=True, capture_output=True, timeout=300)
    for name in ("schemas", "producers"):
        (user / name).mkdir(parents=True)
        (user / name / "__init__.py").write_text(f"OWNER = 'user {name}'\n")
    got = _python_with_path([target, user], """
import schemas, producers
import streamrl.schemas, streamrl.producers
print(json.dumps({
    "streamrl": streamrl.__file__,
    "streamrl.schemas": streamrl.schemas.__file__,
    "streamrl.producers": streamrl.producers.__file__,
    "schemas": schemas.OWNER, "producers": producers.OWNER,
    "has_decoder": hasattr(streamrl.schemas, "decode_trajectories"),
}))
""", cwd=tmp_path)
    installed = target / "streamrl"
    assert got["streamrl"] == str(installed / "__init__.py")
    assert got["streamrl.schemas"] == str(installed / "schemas" / "__init__.py")
    assert got["streamrl.producers"] == str(installed / "producers" / "__init__.py")
    assert got["has_decoder"]
    assert (got["schemas"], got["producers"]) == ("user schemas", "user producers")


def test_a_checkout_maps_exactly_its_three_folders(tmp_path: Path) -> None:
    got = _python_with_path([REPO], """
import importlib
import streamrl.producers
mapped = {}
for name in ("schemas", "producers", "consumers", "tests", "recipes", "bench"):
    try:
        mapped[name] = importlib.import_module("streamrl." + name).__file__
    except ModuleNotFoundError:
        mapped[name] = None
print(json.dumps({"producers": streamrl.producers.__file__, "mapped": mapped}))
""", cwd=tmp_path)
    assert got["producers"] == str(REPO / "producers" / "__init__.py")
    assert got["mapped"] == {
        **{folder: str(REPO / folder / "__init__.py") for folder in FOLDERS},
        "tests": None, "recipes": None, "bench": None}
