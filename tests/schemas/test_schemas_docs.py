"""docs/schema-evolution.md ties each rule to tests: every test it cites must exist."""

from __future__ import annotations

import re
from pathlib import Path

HERE = Path(__file__).parent
DOC = HERE.parents[1] / "docs" / "schema-evolution.md"


def test_every_test_cited_by_the_evolution_rules_exists() -> None:
    cited = set(re.findall(r"`(?:[\w.]+::)?(test_\w+)`", DOC.read_text()))
    defined = set(re.findall(r"^def (test_\w+)\(", "\n".join(
        p.read_text() for p in HERE.glob("*.py")), flags=re.MULTILINE))
    assert len(cited) >= 15
    assert cited - defined == set()
