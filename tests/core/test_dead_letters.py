"""Dead letters: refused input lands in the run's dlq stream with why and the original bytes, and
the component keeps going with nothing accepted lost."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from streamrl import aio
from streamrl.dlq import DeadLetters
from streamrl.log import open_log
from streamrl.log.memory import MemoryLog
from streamrl.schemas import (
    DeadLetter,
    decode_event,
    decode_trajectories,
    encode_trajectories,
    samples_to_batch,
)
from streamrl.schemas.testing import make_group
from streamrl.streams import RunStreams
from tests.helpers import REPO, child_env


async def test_a_bad_record_is_dead_lettered_and_the_next_one_still_decodes() -> None:
    import numpy as np

    log = MemoryLog()
    streams = RunStreams("r1")
    for s in (streams.trajectories, streams.dlq):
        await log.ensure_stream(s)
    good = encode_trajectories(samples_to_batch(make_group(np.random.default_rng(0), 2)))
    await log.append(streams.trajectories, good[: len(good) // 2])  # torn in transit
    await log.append(streams.trajectories, good)
    dlq = DeadLetters(log, "r1", component="trainer")
    decoded = [await dlq.decode_or_reject(r, decode_trajectories)
               for r in await log.read_all(streams.trajectories)]
    assert decoded[0] is None and decoded[1].num_rows == 2
    [letter_record] = await log.read_all(streams.dlq)
    letter = decode_event(letter_record.value, "dlq")
    assert isinstance(letter, DeadLetter)
    assert letter.component == "trainer" and letter.reason_code
    assert letter.original == good[: len(good) // 2]
    assert (letter.source.stream, letter.source.offset) == (streams.trajectories, 0)


async def test_errors_that_are_not_contract_violations_propagate() -> None:
    log = MemoryLog()
    await log.ensure_stream(RunStreams("r1").dlq)
    await log.ensure_stream(RunStreams("r1").trajectories)
    await log.append(RunStreams("r1").trajectories, b"x")
    [record] = await log.read(RunStreams("r1").trajectories, 0, 0)

    def buggy(_: bytes) -> None:
        raise KeyError("a bug in the consumer")

    with pytest.raises(KeyError):
        await DeadLetters(log, "r1", "trainer").decode_or_reject(record, buggy)
    assert await log.end_offset(RunStreams("r1").dlq, 0) == 0


async def _read_back(url: str, streams: RunStreams) -> tuple[dict[int, bytes], list[DeadLetter]]:
    async with open_log(url) as log:
        trajectories = {r.offset: r.value for r in await log.read_all(streams.trajectories)}
        letters = [decode_event(r.value, "dlq") for r in await log.read_all(streams.dlq)]
    return trajectories, letters


def test_ten_thousand_mutated_messages_each_rejected_into_the_dlq(tmp_path: Path) -> None:
    url = f"file://{tmp_path / 'log'}"
    out = subprocess.run(
        [sys.executable, str(REPO / "tests/core/dlq_fuzz_child.py"), url, "fuzz", "--count",
         "10000"], capture_output=True, text=True, timeout=300,
        env=child_env(), cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    assert report["accepted"] + report["rejected"] == 10_000
    assert report["rejected"] > 5_000  # most mutations break something
    trajectories, letters = aio.run(_read_back(url, RunStreams("fuzz")))
    assert len(trajectories) == 10_000
    assert len(letters) == report["rejected"]
    # Each dead letter names its source and carries exactly the bytes that were refused.
    sources = [letter.source.offset for letter in letters]
    assert len(set(sources)) == len(sources)
    for letter in letters:
        assert letter.original == trajectories[letter.source.offset]
        assert letter.reason_code and letter.detail
    # Everything not dead-lettered decodes: nothing accepted was lost.
    for offset in set(trajectories) - set(sources):
        decode_trajectories(trajectories[offset])
