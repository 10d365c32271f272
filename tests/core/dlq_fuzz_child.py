"""Child process of test_dead_letters: 10,000 mutated trajectory messages through a real log.

A producer appends every message to `<run>.trajectories`; a consumer reads them back through
`DeadLetters.decode_or_reject`, exactly as a trainer does. Prints one JSON line of counts. Runs in
its own process so a crash in native code shows as a non-zero exit.

    PYTHONPATH=. python tests/core/dlq_fuzz_child.py LOG_URL RUN_ID --count 10000
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "schemas"))

from fuzz_child import MUTATIONS, base_messages

from streamrl import aio
from streamrl.dlq import DeadLetters
from streamrl.log import Append, open_log
from streamrl.schemas import decode_trajectories
from streamrl.streams import RunStreams


async def main(url: str, run_id: str, count: int, seed: int) -> dict[str, int]:
    streams = RunStreams(run_id)
    bases = base_messages()
    messages = []
    for index in range(count):
        rng = random.Random(seed * 1_000_003 + index)
        messages.append(rng.choice(MUTATIONS)(rng, rng.choice(bases), bases))
    async with open_log(url) as log:
        for stream in (streams.trajectories, streams.dlq):
            await log.ensure_stream(stream, 1)
        for i in range(0, count, 500):
            chunk = messages[i : i + 500]
            await log.append_many([Append(stream=streams.trajectories, value=m) for m in chunk])
        dlq = DeadLetters(log, run_id, component="fuzz-consumer")
        accepted, offset = 0, 0
        while records := await log.read(streams.trajectories, 0, offset, max_records=1000):
            for record in records:
                if await dlq.decode_or_reject(record, decode_trajectories) is not None:
                    accepted += 1
                offset = record.offset + 1
    return {"total": count, "accepted": accepted, "rejected": dlq.num_rejected}


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("run_id")
    p.add_argument("--count", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args()
    json.dump(aio.run(main(args.url, args.run_id, args.count, args.seed)), sys.stdout)
