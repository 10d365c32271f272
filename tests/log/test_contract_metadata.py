"""The log contract, continued: committed positions carry a metadata string, on every backend
(memory, file, Kafka), stored and read back atomically with the offset."""

from __future__ import annotations

import pytest

from streamrl.log import MAX_METADATA_BYTES, Append, Committed, StreamPartition
from tests.log.helpers import unique
from tests.log.test_contract import LogFactory, make  # noqa: F401 - the backends fixture


async def test_metadata_is_committed_with_the_offset_and_survives_restart(
        make: LogFactory) -> None:  # noqa: F811
    log = await make()
    s = unique("prompts")
    await log.ensure_stream(s, 2)
    await log.commit("g", {StreamPartition(s, 0): Committed(3, "done:4,6 é"),
                           StreamPartition(s, 1): 7})
    again = await make()
    assert await again.committed_with_metadata("g", s, 0) == Committed(3, "done:4,6 é")
    assert await again.committed_with_metadata("g", s, 1) == Committed(7, "")
    assert await again.committed("g", s, 0) == 3
    assert await again.committed_with_metadata("other", s, 0) is None


async def test_transact_commits_metadata_and_a_plain_offset_clears_it(
        make: LogFactory) -> None:  # noqa: F811
    log = await make()
    s, out = unique("prompts"), unique("trajectories")
    await log.ensure_stream(s, 2)
    await log.ensure_stream(out, 1)
    await log.commit("g", {StreamPartition(s, 1): Committed(5, "kept")})
    [pos] = await log.transact("g", {StreamPartition(s, 0): Committed(2, "a")},
                               [Append(stream=out, value=b"group-3")])
    assert await log.committed_with_metadata("g", s, 0) == Committed(2, "a")
    assert (await log.read(out, 0, pos.offset, timeout_s=5))[0].value == b"group-3"
    # the same offset with new metadata replaces it: position and metadata move together
    await log.transact("g", {StreamPartition(s, 0): Committed(2, "b")}, [])
    assert await log.committed_with_metadata("g", s, 0) == Committed(2, "b")
    # a plain int commits no metadata, as every Kafka commit replaces it
    await log.transact("g", {StreamPartition(s, 0): 4}, [Append(stream=out, value=b"x")])
    assert await log.committed_with_metadata("g", s, 0) == Committed(4, "")
    assert await log.committed_with_metadata("g", s, 1) == Committed(5, "kept")


async def test_oversized_metadata_is_refused_before_anything_is_written(
        make: LogFactory) -> None:  # noqa: F811
    log = await make()
    s, out = unique("prompts"), unique("trajectories")
    await log.ensure_stream(s, 1)
    await log.ensure_stream(out, 1)
    sp = StreamPartition(s, 0)
    largest = "x" * MAX_METADATA_BYTES
    await log.commit("g", {sp: Committed(1, largest)})
    assert await log.committed_with_metadata("g", s, 0) == Committed(1, largest)
    too_big = "é" * (MAX_METADATA_BYTES // 2 + 1)  # counted in UTF-8 bytes, not characters
    with pytest.raises(ValueError, match=rf"'g', {s}\[0\]: metadata is 4098 bytes"):
        await log.transact("g", {sp: Committed(2, too_big)}, [Append(stream=out, value=b"r")])
    with pytest.raises(ValueError, match="metadata is 4098 bytes"):
        await log.commit("g", {sp: Committed(2, too_big)})
    with pytest.raises(ValueError, match="offset must be an int >= 0"):
        await log.commit("g", {sp: Committed(-1, "")})
    assert await log.committed_with_metadata("g", s, 0) == Committed(1, largest)
    assert await log.read(out, 0, 0) == []
