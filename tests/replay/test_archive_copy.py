"""Streams copied between logs keep every record's offset and timestamp (streamrl/replay/archive/
copy.py): Kafka's transaction markers become invisible marker records on the file log, and
commit markers again on Kafka; readers see exactly the source's records at the same offsets."""

from __future__ import annotations

import uuid
from pathlib import Path

from streamrl.log import Append, Log, open_log
from streamrl.replay.archive.copy import copy_stream, marker_written


def seen(records: list) -> list[tuple[int, bytes, bytes | None, int]]:
    return [(r.offset, r.value, r.key, r.timestamp_ms) for r in records]


async def write_with_gaps(log: Log, stream: str) -> None:
    """Plain appends, then two transactions: the first one's commit marker takes offset 4."""
    await log.ensure_stream(stream, 1)
    await log.append_many([Append(stream=stream, value=b"v%d" % i, key=b"k") for i in range(2)])
    await log.transact("copy-test", {}, [Append(stream=stream, value=b"t1a"),
                                         Append(stream=stream, value=b"t1b")])
    await marker_written(log, stream, 0, 5)  # Kafka writes the marker after the commit returns
    await log.transact("copy-test", {}, [Append(stream=stream, value=b"t2")])
    await marker_written(log, stream, 0, 7)
    await log.append(stream, b"last")


async def test_a_kafka_stream_keeps_its_offsets_on_the_file_log_and_on_kafka(
        kafka_url: str, tmp_path: Path) -> None:
    stream = f"copy-{uuid.uuid4().hex[:8]}.events"
    back = f"copy-{uuid.uuid4().hex[:8]}.events"
    async with (open_log(kafka_url, writer_id=f"{stream}-writer") as kafka,
                open_log(kafka_url, writer_id=f"{back}-import") as target):
        await check_copies(kafka, target, stream, back, tmp_path)


async def check_copies(kafka: Log, target: Log, stream: str, back: str, tmp_path: Path) -> None:
    await write_with_gaps(kafka, stream)
    source = seen(await kafka.read_all(stream))
    offsets = [o for o, *_ in source]
    assert len(offsets) == 6 and offsets[:4] == [0, 1, 2, 3] and offsets[4] == 5  # 4: a marker

    async with open_log(str(tmp_path / "log")) as file_log:
        assert await copy_stream(kafka, file_log, stream) == [await kafka.end_offset(stream, 0)]
        assert seen(await file_log.read_all(stream)) == source
        assert [r.offset for r in await file_log.read(stream, 0, 4)] == [5, 7]
        assert not await file_log.contiguous(stream)

        contiguous = f"{stream}-contiguous"
        await file_log.ensure_stream(contiguous, 1)
        await file_log.append(contiguous, b"x")
        assert await file_log.contiguous(contiguous)

        # and back onto Kafka: the transactions' commit markers take the offsets again
        await copy_stream(file_log, target, stream, to=back)
        assert seen(await target.read_all(back)) == [(o, v, k, t) for o, v, k, t in source]
        assert await target.end_offset(back, 0) == await kafka.end_offset(stream, 0)
