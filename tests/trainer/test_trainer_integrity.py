"""A trajectory record whose bytes changed after the producer wrote them (one flipped bit that
still decodes as valid Arrow) goes to the dead-letter stream with `digest_mismatch` and its
original bytes; the trainer trains on the records around it."""

from __future__ import annotations

import uuid
from pathlib import Path

import msgspec
import numpy as np

from streamrl.audit import audit_run
from streamrl.consumers.trainer.__main__ import train
from streamrl.log import Append, open_log
from streamrl.recipe.config import load_config
from streamrl.run.driver import start_run
from streamrl.schemas import BatchFormed, decode_event, encode_trajectories, samples_to_batch
from streamrl.schemas.integrity import digest_headers
from streamrl.schemas.testing import make_group
from tests.helpers import TINY
from tests.schemas.test_integrity import flip_a_logprob_bit


async def test_a_corrupted_record_is_dead_lettered_and_training_continues(tmp_path: Path) -> None:
    config = load_config(TINY)  # batch_size 8: two groups of 4 make a batch
    config = msgspec.structs.replace(config, run=msgspec.structs.replace(config.run,
                                                                         max_versions=1))
    run_id = f"digest-{uuid.uuid4().hex[:8]}"
    log_url = str(tmp_path / "log")
    rng = np.random.default_rng(0)
    groups = [[msgspec.structs.replace(s, response_versions=np.zeros(3, np.uint32))
               for s in make_group(rng, 4, vocab_size=14, policy_version=0, run_id=run_id,
                                   num_prompt_tokens=4, num_response_tokens=3)]
              for _ in range(3)]
    values = [encode_trajectories(samples_to_batch(g)) for g in groups]
    flipped = flip_a_logprob_bit(values[1], samples_to_batch(groups[1]))
    async with open_log(log_url, writer_id=f"{run_id}-driver") as log:
        ctx, v0 = await start_run(config, log, run_id, tmp_path / "runs", recipe=str(TINY))
        with v0:
            await log.append_many([  # the middle record: changed after its digest was taken
                Append(stream=ctx.streams.trajectories, value=bad, headers=digest_headers(good))
                for good, bad in zip(values, [values[0], flipped, values[2]], strict=True)])
            await train(log_url, run_id)
            [letter] = [decode_event(r.value, "dlq") for r in await log.read_all(ctx.streams.dlq)]
            events = [decode_event(r.value, "events") for r in await log.read_all(
                ctx.streams.events)]
            codes = (await audit_run(log, run_id)).codes()
    assert letter.reason_code == "digest_mismatch" and letter.component == "trainer"
    assert letter.original == flipped and letter.source.offset == 1
    [batch] = [e for e in events if isinstance(e, BatchFormed)]
    assert set(batch.sample_ids) == {s.sample_id for g in (groups[0], groups[2]) for s in g}
    assert [p.offset for p in batch.positions] == [0] * 4 + [2] * 4
    assert "undecodable_record" not in codes  # refused into the dlq, as audit expects
