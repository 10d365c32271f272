"""File log: several processes appending to one partition, and one tailing it, all at once."""

from __future__ import annotations

import asyncio
import itertools
import sys
import textwrap
from pathlib import Path

from streamrl.log.file import FileLog
from streamrl.log.file.segments import list_segments
from tests.helpers import child_env

PER_WRITER = 400

# Once <root>.go exists, appends PER_WRITER records "<writer>:<i>:<padding>" in random batches;
# small segments, so the writers also race over segment rolls.
WRITER = textwrap.dedent(
    """
    import asyncio, os, random, sys
    from streamrl.log import Append
    from streamrl.log.file import FileLog

    async def main(root, name, count):
        rng = random.Random(name)
        async with FileLog(root, segment_bytes=32 * 1024) as log:
            while not os.path.exists(root + ".go"):  # start together
                await asyncio.sleep(0.001)
            i = 0
            while i < count:
                k = min(rng.randint(1, 5), count - i)
                pad = [bytes(rng.randint(0, 3000)) for _ in range(k)]
                await log.append_many([
                    Append(stream="events", value=b"%s:%d:%s" % (name.encode(), j, p))
                    for j, p in zip(range(i, i + k), pad)
                ])
                i += k

    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
    """
)

# Follows the partition from offset 0 and prints "<offset> <writer>:<i>" for each record.
TAILER = textwrap.dedent(
    """
    import asyncio, sys
    from streamrl.log.file import FileLog

    async def main(root, total):
        async with FileLog(root) as log:
            seen = 0
            async for rec in log.follow("events", 0, 0, poll_s=0.05):
                name, i, _ = rec.value.split(b":", 2)
                print(rec.offset, (name + b":" + i).decode(), flush=True)
                seen += 1
                if seen == total:
                    return

    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
    """
)


async def test_two_writer_processes_and_a_tailing_reader(tmp_path: Path) -> None:
    root = tmp_path / "log"
    async with FileLog(root) as log:
        await log.ensure_stream("events", 1)
    (tmp_path / "writer.py").write_text(WRITER)
    (tmp_path / "tailer.py").write_text(TAILER)
    env = child_env()
    total = 2 * PER_WRITER
    tailer = await asyncio.create_subprocess_exec(
        sys.executable, str(tmp_path / "tailer.py"), str(root), str(total),
        stdout=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    writers = [
        await asyncio.create_subprocess_exec(
            sys.executable, str(tmp_path / "writer.py"), str(root), name, str(PER_WRITER), env=env
        )
        for name in ("a", "b")
    ]
    await asyncio.to_thread(Path(f"{root}.go").touch)
    for proc in writers:
        assert await asyncio.wait_for(proc.wait(), 60) == 0
    out, _ = await asyncio.wait_for(tailer.communicate(), 60)
    assert tailer.returncode == 0

    async with FileLog(root) as log:
        records = []
        while page := await log.read("events", 0, len(records)):
            records += page
    assert [r.offset for r in records] == list(range(total))  # contiguous, nothing extra
    tags = [b":".join(r.value.split(b":", 2)[:2]).decode() for r in records]
    for name in ("a", "b"):  # each record exactly once, each writer's in its order
        assert [t for t in tags if t.startswith(name + ":")] == [
            f"{name}:{i}" for i in range(PER_WRITER)
        ]
    # The tailer saw the same sequence, in offset order, while it was being written.
    assert out.decode().splitlines() == [f"{i} {t}" for i, t in enumerate(tags)]
    assert len(list_segments(root / "events" / "0")) > 3  # the writers also shared rolls
    assert any(x[0] != y[0] for x, y in itertools.pairwise(tags))  # really interleaved
