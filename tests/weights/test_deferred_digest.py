"""`begin_publish`: the version's bytes are copied out at once and its digest follows on a
background thread, so the trainer's next step may change its weights while the digest of the
previous version is still being computed; the digest is the same as `publish`'s."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import torch
from test_weights_contract import assert_bit_identical, state_dict

from streamrl.weights import WeightVersionUnavailable, open_transport, weights_digest


@pytest.mark.parametrize("kind", ["file", "shm"])
def test_changing_the_weights_after_begin_publish_changes_neither_bytes_nor_digest(
        kind: str, tmp_path: Path) -> None:
    where = ({"directory": tmp_path} if kind == "file"
             else {"namespace": f"test-{uuid.uuid4().hex[:10]}"})
    with open_transport(kind, keep_last=1, **where) as t:
        sd = state_dict(0)
        want = {k: v.clone() for k, v in sd.items()}
        pending = t.begin_publish(1, sd)
        with torch.no_grad():  # the next optimizer step, while the digest is computed
            for v in sd.values():
                if v.is_floating_point():
                    v.add_(1.0)
        published = t.finish_publish(pending)
        assert published.digest == weights_digest(want) != weights_digest(sd)
        assert pending.digest_ms is not None and pending.digested_at is not None
        assert_bit_identical(t.load(published.locator, expected_digest=published.digest), want)
        assert t.finish_publish(pending) == published  # idempotent: retained once
        # The next begin_publish finishes a pending version first, and retention follows.
        second = t.begin_publish(2, sd)
        third = t.begin_publish(3, state_dict(3))
        assert second.future.done() and [p.version for p in t.retained] == [2]
        with pytest.raises(WeightVersionUnavailable):
            t.load(published.locator)
        assert t.finish_publish(third).digest == weights_digest(state_dict(3))
        assert [p.version for p in t.retained] == [3]


def test_closing_with_a_version_pending_releases_it_too(tmp_path: Path) -> None:
    t = open_transport("file", directory=tmp_path, keep_last=2)
    t.publish(1, state_dict(1))
    t.begin_publish(2, state_dict(2))
    t.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == []
