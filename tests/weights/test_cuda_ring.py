"""The cuda_ipc ring's bookkeeping on real files, no GPU: slot choice, reader holds, generation
checks, dead readers, and the publisher's timeout naming the reader that did not let go."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from streamrl.weights.cuda_ring import (
    ReaderTimeout,
    Ring,
    SlotOverwritten,
    choose_slot,
    reader_token,
)
from tests.helpers import REPO


@pytest.fixture
def ring(tmp_path: Path) -> Ring:
    return Ring.create(tmp_path, f"t{uuid.uuid4().hex[:6]}", slots=2)


def test_the_next_slot_is_the_oldest_one_no_reader_holds() -> None:
    assert choose_slot([0, 1, 2], held=set()) == 0
    assert choose_slot([0, 1, 2], held={0}) == 1
    assert choose_slot([2, 0, 1], held={2, 0}) == 1
    assert choose_slot([1, 0], held={0, 1}) == 1  # all held: wait for the oldest
    with pytest.raises(ValueError, match="at least one slot"):
        choose_slot([], held=set())


def test_generations_start_at_zero_and_each_write_bumps_one_slot(ring: Ring) -> None:
    assert [ring.generation(s) for s in (0, 1)] == [0, 0]
    assert ring.begin_write(1) == 1
    assert ring.begin_write(1) == 2
    assert [ring.generation(s) for s in (0, 1)] == [0, 2]
    ring.remove()
    assert ring.generation(0) == -1


def test_a_reader_finding_its_slot_reused_gets_an_error_and_leaves_no_hold(ring: Ring) -> None:
    token = reader_token()
    generation = ring.begin_write(0)  # the version the manifest names...
    ring.begin_write(0)  # ...overwritten before the reader got to it
    with pytest.raises(SlotOverwritten, match=r"slot 0 .* holds generation 2, not 1"):
        ring.hold(token, 0, generation)
    assert ring.holds() == []
    ring.remove()
    with pytest.raises(SlotOverwritten, match="is gone"):
        ring.hold(token, 0, generation)


def test_a_publisher_waits_for_the_holding_reader_then_proceeds(ring: Ring) -> None:
    token = reader_token()
    generation = ring.begin_write(0)
    ring.hold(token, 0, generation)
    ring.wait_released(1, ring.begin_write(1), timeout_s=1)  # another slot: no wait
    new = ring.begin_write(0)
    threading.Timer(0.3, ring.release, args=(token,)).start()
    t0 = time.monotonic()
    ring.wait_released(0, new, timeout_s=10)
    assert time.monotonic() - t0 >= 0.25
    assert ring.holds() == []


def test_a_reader_that_never_lets_go_is_named_in_the_timeout(ring: Ring) -> None:
    import os

    token = reader_token()
    ring.hold(token, 1, ring.begin_write(1))
    new = ring.begin_write(1)
    with pytest.raises(ReaderTimeout, match=rf"reader pid {os.getpid()} \(hold-{os.getpid()}-"
                       rf"{token}\) on slot 1 generation 1 did not finish .* within 0.2 s"):
        ring.wait_released(1, new, timeout_s=0.2)
    assert len(ring.holds()) == 1  # still held: nothing was overwritten


_DEAD_READER = """
import sys
from pathlib import Path
from streamrl.weights.cuda_ring import Ring, reader_token
ring = Ring(Path(sys.argv[1]))
ring.hold(reader_token(), 0, ring.generation(0))
print(ring.holds()[0].pid)
"""  # exits (crashes, as far as the ring knows) without releasing


def test_a_dead_readers_hold_does_not_block_the_publisher(ring: Ring) -> None:
    out = subprocess.run([sys.executable, "-c", _DEAD_READER, str(ring.path)], cwd=REPO,
                         capture_output=True, text=True, check=True)
    assert int(out.stdout) > 0
    assert len(list(ring.path.glob("hold-*"))) == 1
    t0 = time.monotonic()
    ring.wait_released(0, ring.begin_write(0), timeout_s=5)
    assert time.monotonic() - t0 < 1
    assert list(ring.path.glob("hold-*")) == []


def test_ring_names_from_a_manifest_cannot_escape_the_directory(tmp_path: Path) -> None:
    for bad in ("..", "streamrl-x-ring-../../etc", "etc", "streamrl-x-ring-XYZ"):
        with pytest.raises(ValueError, match="not a ring directory"):
            Ring(tmp_path / bad)
    with pytest.raises(ValueError, match="at least 1 slot"):
        Ring.create(tmp_path, "x", slots=0)
