"""The suite's own layout: test folders are not packages, so pytest imports each test module by
its file name alone, and two test files with one name stop collection of the whole suite."""

from __future__ import annotations

from collections import defaultdict

from tests.helpers import REPO


def test_every_test_file_has_a_name_of_its_own() -> None:
    where: dict[str, list[str]] = defaultdict(list)
    for path in sorted((REPO / "tests").rglob("test_*.py")):
        where[path.name].append(str(path.relative_to(REPO)))
    clashes = {name: paths for name, paths in where.items() if len(paths) > 1}
    assert not clashes, f"rename one of each: {clashes}"
