"""File log: writer processes killed with SIGKILL lose nothing acknowledged and leave no garbage;
a transaction whose record is durable is completed after a crash, a torn one never happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from streamrl.log import Append, StreamPartition
from streamrl.log.file import FileLog
from streamrl.log.file import txn as file_txn
from streamrl.log.file.segments import segment_name
from tests.helpers import child_env

TOTAL = 1000

# Appends records 0..TOTAL-1 (resuming after what is already there) with fsync="always" and
# prints each acknowledged offset as soon as append_many returns.
WRITER = textwrap.dedent(
    """
    import asyncio, random, sys
    from streamrl.log import Append
    from streamrl.log.file import FileLog

    BLOCK = random.Random(0).randbytes(1 << 21)

    def payload(i):
        size = random.Random(i).choice([10, 3000, 70_000, 1_000_000])
        start = (i * 7919) % (len(BLOCK) - size)
        return b"%d:" % i + BLOCK[start : start + size]

    async def main(root, seed, total):
        rng = random.Random(seed)
        async with FileLog(root, fsync="always", segment_bytes=1 << 20) as log:
            await log.ensure_stream("s", 1)
            n = await log.end_offset("s", 0)
            while n < total:
                k = min(rng.randint(1, 3), total - n)
                done = await log.append_many(
                    [Append(stream="s", value=payload(i)) for i in range(n, n + k)]
                )
                print(*(p.offset for p in done), sep="\\n", flush=True)
                n += k

    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
    """
)


BLOCK = random.Random(0).randbytes(1 << 21)


def payload(i: int) -> bytes:  # the same as the writer script's, cheap so kills land in writes
    size = random.Random(i).choice([10, 3000, 70_000, 1_000_000])
    start = (i * 7919) % (len(BLOCK) - size)
    return b"%d:" % i + BLOCK[start : start + size]


async def read_all(log: FileLog, stream: str, partition: int = 0) -> list[bytes]:
    out, offset = [], 0
    while page := await log.read(stream, partition, offset):
        out += [r.value for r in page]
        offset = page[-1].offset + 1
    return out


async def test_kill_9_at_random_moments_keeps_an_acknowledged_prefix(tmp_path: Path) -> None:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    root = tmp_path / "log"
    rng = random.Random(20240611)
    acked: set[int] = set()
    kills = 0
    async with FileLog(root) as log:  # so that a kill during the first start-up finds it
        await log.ensure_stream("s", 1)
    for rounds in range(1, 30):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(script), str(root), str(rounds), str(TOTAL),
            stdout=asyncio.subprocess.PIPE, env=child_env(),
        )  # fmt: skip
        assert proc.stdout is not None
        # Kill at a random moment once it is appending (its first acknowledgement is out).
        first = await asyncio.wait_for(proc.stdout.readline(), 60)
        await asyncio.sleep(rng.uniform(0.0, 0.3))
        with contextlib.suppress(ProcessLookupError):  # it may have finished already
            proc.send_signal(signal.SIGKILL)
        rest, _ = await proc.communicate()
        kills += proc.returncode == -signal.SIGKILL
        lines = (first + rest).decode().split("\n")
        acked |= {int(line) for line in lines[:-1]}  # the last line may be cut mid-number
        async with FileLog(root) as log:
            got = await read_all(log, "s")
        # A prefix of what was attempted: records 0..k in order, each exactly as written.
        assert all(v == payload(i) for i, v in enumerate(got)), f"garbage in round {rounds}"
        assert not acked or max(acked) < len(got), f"lost acknowledged records in round {rounds}"
        if len(got) == TOTAL:
            break
    assert kills >= 3
    # A last writer finishes the job on top of whatever the kills left.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), str(root), "0", str(TOTAL), env=child_env()
    )
    assert await proc.wait() == 0
    async with FileLog(root) as log:
        got = await read_all(log, "s")
    assert len(got) == TOTAL and all(v == payload(i) for i, v in enumerate(got))


# Appends a few records, then runs one transaction with a hook that kills the process right
# after the transaction record is durable, before any of it is applied.
TRANSACTOR = textwrap.dedent(
    """
    import asyncio, os, sys
    from streamrl.log import Append, StreamPartition
    from streamrl.log.file import FileLog
    from streamrl.log.file import txn as file_txn

    async def main(root):
        async with FileLog(root) as log:
            await log.ensure_stream("traj", 2)
            await log.ensure_stream("events", 1)
            await log.append_many([Append(stream="events", value=b"e%d" % i) for i in range(3)])
            file_txn.HOOKS.after_txn_durable = lambda: os._exit(17)
            await log.transact(
                "trainer",
                {StreamPartition("traj", 0): 5, StreamPartition("traj", 1): 2},
                [
                    Append(stream="events", value=b"BatchFormed"),
                    Append(stream="traj", value=b"t", partition=1),
                    Append(stream="events", value=b"TrainStep"),
                ],
            )

    asyncio.run(main(sys.argv[1]))
    """
)
APPLIED = {"events": [b"e0", b"e1", b"e2", b"BatchFormed", b"TrainStep"], "traj": [b"t"]}


def crash_mid_transaction(tmp_path: Path, hook: str = "after_txn_durable") -> Path:
    """Run TRANSACTOR with its crash at `hook`; returns the transaction record it left."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    script = tmp_path / "transactor.py"
    script.write_text(TRANSACTOR.replace("after_txn_durable = lambda:", f"{hook} = lambda *_:"))
    root = tmp_path / "log"
    proc = subprocess.run([sys.executable, str(script), str(root)], env=child_env())
    assert proc.returncode == 17
    [record] = [p for p in (root / "_txn").iterdir() if p.suffix == ".txn"]
    return record


async def state(log: FileLog) -> tuple[list[bytes], list[bytes], int | None, int | None]:
    return (
        await read_all(log, "events"),
        await read_all(log, "traj", 1),
        await log.committed("trainer", "traj", 0),
        await log.committed("trainer", "traj", 1),
    )


async def test_a_durable_transaction_is_completed_once_after_a_crash(tmp_path: Path) -> None:
    record = crash_mid_transaction(tmp_path)
    root = record.parents[1]
    saved = record.read_bytes()
    async with FileLog(root) as log:
        assert await state(log) == (APPLIED["events"], APPLIED["traj"], 5, 2)
    assert not record.exists()
    # Crash again after applying but before deleting the record, this time with the last
    # events frame lost as well: applying again adds only what is missing.
    record.write_bytes(saved)
    seg = root / "events" / "0" / segment_name(0)
    data = seg.read_bytes()
    seg.write_bytes(data[: data.rfind(b"BatchFormed") + len(b"BatchFormed")])
    async with FileLog(root) as log:
        assert await state(log) == (APPLIED["events"], APPLIED["traj"], 5, 2)
        assert await log.end_offset("events", 0) == 5
        assert (await log.append("events", b"after")).offset == 5


async def test_a_writer_already_running_completes_the_dead_transaction_first(
    tmp_path: Path,
) -> None:
    root = tmp_path / "log"
    async with FileLog(root) as survivor:  # open before the crash: no start-up roll forward
        await survivor.ensure_stream("events", 1)
        crash_mid_transaction(tmp_path)
        # Its next append must not take the offsets the dead transaction reserved.
        assert (await survivor.append("events", b"late")).offset == 5
        assert await read_all(survivor, "events") == [*APPLIED["events"], b"late"]
        assert await survivor.committed("trainer", "traj", 0) == 5
        await survivor.commit("trainer", {StreamPartition("traj", 0): 9})
        assert await survivor.committed("trainer", "traj", 0) == 9


async def test_a_torn_transaction_record_means_nothing_happened(tmp_path: Path) -> None:
    for cut in ("half", "zeros"):
        record = crash_mid_transaction(tmp_path / cut)
        root = record.parents[1]
        size = record.stat().st_size
        record.write_bytes(record.read_bytes()[: size // 2] if cut == "half" else bytes(size))
        async with FileLog(root) as log:
            assert await state(log) == ([b"e0", b"e1", b"e2"], [], None, None)
            assert (await log.append("events", b"next")).offset == 3
        assert not record.exists()
        assert (root / "_txn" / "torn" / record.name).exists()


async def test_a_half_applied_dead_transaction_stays_invisible_until_completed(
    tmp_path: Path,
) -> None:
    root = tmp_path / "log"
    async with FileLog(root) as survivor:
        await survivor.ensure_stream("events", 1)
        # The owner dies after writing the events part, before the traj part and the positions.
        record = crash_mid_transaction(tmp_path, hook="after_txn_part")
        assert b"BatchFormed" in (root / "events" / "0" / segment_name(0)).read_bytes()
        assert await read_all(survivor, "events") == [b"e0", b"e1", b"e2"]
        # The next writer of any partition it names completes it whole before appending.
        assert (await survivor.append("traj", b"late", partition=1)).offset == 1
        assert not record.exists()
        assert await state(survivor) == (APPLIED["events"], [b"t", b"late"], 5, 2)


async def test_a_live_transaction_is_invisible_until_all_of_it_is_applied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[StreamPartition, list[bytes]]] = []
    async with FileLog(tmp_path) as writer, FileLog(tmp_path) as reader:
        await writer.ensure_stream("a", 1)
        await writer.ensure_stream("b", 1)
        await writer.append("a", b"before")

        def peek(sp: StreamPartition) -> None:  # runs on the writer thread between the parts
            got = reader._reader(StreamPartition("a", 0)).read(0, 100, 1 << 20)
            seen.append((sp, [r.value for r in got]))

        monkeypatch.setattr(file_txn.HOOKS, "after_txn_part", peek)
        await writer.transact(
            "g",
            {StreamPartition("a", 0): 1},
            [Append(stream="a", value=b"x"), Append(stream="b", value=b"y")],
        )
        assert seen == [
            (StreamPartition("a", 0), [b"before"]),  # written, but b's part is not yet
            (StreamPartition("b", 0), [b"before"]),
        ]
        assert await read_all(reader, "a") == [b"before", b"x"]
        assert await read_all(reader, "b") == [b"y"]
