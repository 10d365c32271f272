"""Fuzz: 12,000 mutated trajectory messages decoded in child processes.

Bit flips (anywhere and in bodies only), truncations, huge lengths written into the IPC framing
and flatbuffer metadata, extension-type metadata, compressed bodies, splices and random garbage.
A crash in native code would surface as a non-zero exit of the child; every decoded message must
end as a usable v1 batch or a `DecodeError` subclass, never any other exception.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

from tests.helpers import REPO, child_env

CHILD = Path(__file__).with_name("fuzz_child.py")
NUM_CHILDREN = 2
PER_CHILD = 6_000


def test_mutated_messages_never_crash_and_always_raise_typed_errors() -> None:
    env = child_env()
    children = [
        subprocess.Popen([sys.executable, str(CHILD), "--seed", str(seed), "--count",
                          str(PER_CHILD)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=env, cwd=REPO)
        for seed in range(NUM_CHILDREN)]
    counts: Counter[str] = Counter()
    for seed, child in enumerate(children):
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, f"seed={seed} died ({child.returncode}): {err[-2000:]!r}"
        report = json.loads(out)
        assert report["first_other"] == {}, f"seed={seed}: rerun with --start INDEX --count 1"
        counts.update(report["counts"])
    assert sum(counts.values()) == NUM_CHILDREN * PER_CHILD
    others = {k: v for k, v in counts.items()
              if k.startswith("other:") or k.endswith(":check_error")}
    assert others == {}
    assert counts["ok"] > 0  # unchanged and harmless mutations still decode
    reasons = {key.split(":")[1] for key in counts if key != "ok"}
    # The mutations reach every layer: framing, schema, Arrow validation and semantic checks.
    assert {"malformed_ipc", "compressed_body", "extension_type", "declared_length_too_large",
            "invalid_arrow", "batch_count", "unknown_major_version"} <= reasons
    assert len(reasons) >= 15, sorted(reasons)
