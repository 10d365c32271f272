"""A tiny LoRA run end to end: every version (version 0 included) is the adapter alone, carried
inline in the weights stream; with the transport directory and the trainer's checkpoints
deleted, the run still replays bit-exactly from its log and initial checkpoint, and audits
clean."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest

from streamrl import aio
from streamrl.audit import audit_run
from streamrl.log import open_log
from streamrl.models.lora import is_adapter
from streamrl.replay.exact import replay_exact
from streamrl.schemas import decode_event
from streamrl.streams import RunStreams
from streamrl.weights.inline import INLINE, load_inline
from tests.helpers import TINY, streamrl


@pytest.mark.slow
@pytest.mark.timeout(900)  # a whole run: three processes on a shared 2-core machine
def test_a_lora_run_replays_from_its_log_alone(tmp_path: Path) -> None:
    recipe = tmp_path / "lora.toml"
    text = TINY.read_text()
    assert "lr = 1e-3\n" in text
    assert '"tests.run.tiny_task:reward"' in text
    recipe.write_text(text.replace("lr = 1e-3\n", "lr = 1e-2\nlora = { rank = 4, alpha = 8, "
                                   "dropout = 0.1 }\n"
                                   'algorithm = { advantage = "reinforce_pp" }\n')
                      .replace('"tests.run.tiny_task:reward"', '"tests.lora.lora_task:reward"'))
    log_url, run_id = str(tmp_path / "log"), f"lora-{uuid.uuid4().hex[:8]}"
    out = streamrl("run", str(recipe), "--log", log_url, "--run", run_id, "--runs-dir",
                   str(tmp_path / "runs"))
    assert out.returncode == 0, out.stderr[-4000:] + out.stdout[-2000:]
    run_dir = tmp_path / "runs" / run_id

    async def check() -> None:
        async with open_log(log_url) as log:
            announced = [decode_event(r.value, "weights")
                         for r in await log.read_all(RunStreams(run_id).weights)]
            assert [a.version for a in announced] == [0, 1, 2, 3]
            assert all(a.transport == INLINE for a in announced)
            versions = [load_inline(a) for a in announced]  # digest-checked
            assert all(is_adapter(v) for v in versions)
            assert len({a.digest for a in announced}) == 4  # every step moved the adapter
            # nothing on disk but the log and the initial checkpoint is needed from here
            for path in run_dir.iterdir():
                if path.is_dir() and path.name != "init":
                    shutil.rmtree(path)
            report = await replay_exact(log, run_id)
            assert report.ok, report
            assert report.num_reproduced == 3
            audit = await audit_run(log, run_id)
            assert audit.ok, [v for c in audit.checks for v in c.violations]

    aio.run(check())
