"""`streamrl replay RUN` on real recorded runs: every version reproduced bit-exactly (file log,
Kafka, a run whose trainer was killed and resumed), nothing written while replaying, and a planted
divergence reported at the first diverging version with the tensors that differ."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from streamrl import aio
from streamrl.log import open_log
from streamrl.replay import ReplayError
from streamrl.replay.exact import replay_exact
from streamrl.schemas import (
    BatchFormed,
    CheckpointSaved,
    RunParent,
    RunStarted,
    decode_event,
    encode_event,
)
from streamrl.streams import RunStreams
from tests.helpers import streamrl, streamrl_here
from tests.replay.replay_util import MAX_VERSIONS, MadeRun, snapshot


def _replay_is_exact_and_read_only(made: MadeRun) -> None:
    files = sorted(p for p in (made.runs_dir / made.run_id).rglob("*"))
    before = snapshot(made)
    out = streamrl("replay", made.run_id, "--log", made.log_url)
    assert out.returncode == 0, out.stderr[-3000:] + out.stdout[-3000:]
    assert f"reproduced {MAX_VERSIONS}/{MAX_VERSIONS} versions bit-exactly" in out.stdout
    assert snapshot(made) == before, "replay wrote to the recorded run's streams"
    assert sorted(p for p in (made.runs_dir / made.run_id).rglob("*")) == files


def test_replay_reproduces_every_version_on_the_file_log(file_run: MadeRun) -> None:
    _replay_is_exact_and_read_only(file_run)


def test_replay_reproduces_every_version_on_kafka(kafka_run: MadeRun) -> None:
    _replay_is_exact_and_read_only(kafka_run)


def test_replay_reproduces_a_killed_and_resumed_run(killed_run: MadeRun) -> None:
    _replay_is_exact_and_read_only(killed_run)


def test_replay_until_stops_early_and_the_weights_really_changed(file_run: MadeRun) -> None:
    async def check() -> None:
        async with open_log(file_run.log_url) as log:
            seen: list[int] = []
            report = await replay_exact(log, file_run.run_id, until=2,
                                        on_version=lambda v, total: seen.append(v))
            assert report.ok and report.headline == "reproduced 2/2 versions bit-exactly"
            assert seen == [1, 2]
            digests = {decode_event(r.value, "weights").digest
                       for r in await log.read_all(RunStreams(file_run.run_id).weights)}
            assert len(digests) == MAX_VERSIONS + 1  # every step moved the weights

    aio.run(check())


async def _plant(made: MadeRun, tampered: str, version: int) -> None:
    """Copy the run's events and weights into run `tampered` (same log), with the batch that
    trained `version` pointing at the positions (and samples) of the batch before it. (Scaling
    one batch's loss weights is not a reliable plant: gradient clipping and Adam undo a uniform
    scale.)"""
    src, dst = RunStreams(made.run_id), RunStreams(tampered)
    async with open_log(made.log_url) as log:
        for kind in ("events", "weights"):
            await log.ensure_stream(getattr(dst, kind), 1)
            out, previous = [], None
            for record in await log.read_all(getattr(src, kind)):
                event = msgspec.structs.replace(decode_event(record.value, kind),
                                                run_id=tampered)
                if isinstance(event, BatchFormed):
                    if event.policy_version + 1 == version:
                        assert previous is not None
                        event = msgspec.structs.replace(
                            event, positions=previous.positions,
                            sample_ids=previous.sample_ids,
                            sample_weights=previous.sample_weights)
                    else:
                        previous = event
                out.append(encode_event(event))
            for value in out:
                await log.append(getattr(dst, kind), value)


def test_a_planted_divergence_names_the_first_version_and_the_tensors(
        file_run: MadeRun) -> None:
    tampered = f"{file_run.run_id}-tampered-v2"
    aio.run(_plant(file_run, tampered, 2))
    out = streamrl("replay", tampered, "--log", file_run.log_url)
    assert out.returncode == 1, out.stderr[-3000:] + out.stdout[-3000:]
    assert f"version 2 diverged (reproduced 1/{MAX_VERSIONS}" in out.stdout
    assert "batch-000002" in out.stdout
    # a checkpoint was saved at version 2: the tensors are compared one by one
    assert "recorded tensors: checkpoint" in out.stdout
    assert "tensors that differ at version 2" in out.stdout
    assert "model.layers.0.self_attn.q_proj.weight" in out.stdout
    assert "max |Δ|" in out.stdout


def test_without_stored_tensors_only_the_digest_is_reported(file_run: MadeRun) -> None:
    tampered = f"{file_run.run_id}-tampered-v3"

    async def replay() -> None:
        await _plant(file_run, tampered, 3)
        async with open_log(file_run.log_url) as log:
            report = await replay_exact(log, tampered)
        assert not report.ok and report.num_reproduced == 2
        div = report.divergence
        assert div is not None and div.version == 3 and div.batch_id == "batch-000003"
        # no checkpoint at 3, and the transport released it when the run ended
        assert div.source.startswith("digest only") and div.diffs == []
        assert div.digest != div.expected

    aio.run(replay())


def test_a_changed_initial_checkpoint_diverges_at_version_0(file_run: MadeRun,
                                                           tmp_path) -> None:
    """Replay starts from the checkpoint RunStarted names; if that is not what version 0
    announced, nothing after it can match and replay says so at once."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    async def plant() -> str:
        tampered = f"{file_run.run_id}-init"
        src, dst = RunStreams(file_run.run_id), RunStreams(tampered)
        async with open_log(file_run.log_url) as log:
            for kind in ("events", "weights"):
                await log.ensure_stream(getattr(dst, kind), 1)
                for record in await log.read_all(getattr(src, kind)):
                    event = msgspec.structs.replace(decode_event(record.value, kind),
                                                    run_id=tampered)
                    if isinstance(event, RunStarted):
                        init = tmp_path / "init"
                        shutil.copytree(event.config["init_checkpoint"], init)
                        tensors = load_file(init / "model.safetensors")
                        name = "model.norm.weight"
                        tensors[name] = tensors[name] + torch.full_like(tensors[name], 1e-3)
                        save_file(tensors, init / "model.safetensors")
                        event = msgspec.structs.replace(
                            event, config={**event.config, "init_checkpoint": str(init)})
                    if not isinstance(event, CheckpointSaved):
                        await log.append(getattr(dst, kind), encode_event(event))
        return tampered

    async def replay() -> None:
        tampered = await plant()
        async with open_log(file_run.log_url) as log:
            report = await replay_exact(log, tampered)
        assert report.divergence is not None and report.divergence.version == 0
        assert report.num_reproduced == 0 and report.divergence.batch_id == ""

    aio.run(replay())


def test_replay_refuses_unusable_input_clearly(file_run: MadeRun) -> None:
    code, _, err = streamrl_here("replay", "no-such-run", "--log", file_run.log_url)
    assert code == 2 and "run 'no-such-run' does not exist" in err

    async def past_the_end() -> None:
        async with open_log(file_run.log_url) as log:
            with pytest.raises(ReplayError, match=f"announced versions 0..{MAX_VERSIONS}"):
                await replay_exact(log, file_run.run_id, until=99)

    aio.run(past_the_end())


def test_record_writes_the_replay_as_a_new_run_naming_its_parent(file_run: MadeRun,
                                                                 tmp_path: Path) -> None:
    new_run = f"{file_run.run_id}-rec"
    before = snapshot(file_run)
    out = streamrl("replay", file_run.run_id, "--log", file_run.log_url, "--record",
                   "--as", new_run)
    assert out.returncode == 0, out.stderr[-3000:] + out.stdout[-3000:]
    assert f"recorded as run {new_run}" in out.stdout
    assert snapshot(file_run) == before

    async def check() -> None:
        async with open_log(file_run.log_url) as log:
            def read(run_id: str, kind: str) -> object:
                return log.read_all(getattr(RunStreams(run_id), kind))

            events = [decode_event(r.value, "events") for r in await read(new_run, "events")]
            parent_events = [decode_event(r.value, "events")
                             for r in await read(file_run.run_id, "events")]
            digests = [decode_event(r.value, "weights").digest
                       for r in await read(new_run, "weights")]
            parent_digests = [decode_event(r.value, "weights").digest
                              for r in await read(file_run.run_id, "weights")]
        started = events[0]
        assert isinstance(started, RunStarted) and started.parent == RunParent(
            run_id=file_run.run_id, version=0, relation="replay")
        assert digests == parent_digests
        batches = [e.positions for e in events if isinstance(e, BatchFormed)]
        assert batches == [e.positions for e in parent_events if isinstance(e, BatchFormed)]
        assert [e.version for e in events if isinstance(e, CheckpointSaved)] == [2, 4]

    aio.run(check())
    # its staleness report is the parent's: the same samples, lags and throughput
    reports = []
    for run_id in (file_run.run_id, new_run):
        code, _, err = streamrl_here("staleness", run_id, "--log", file_run.log_url, "--out",
                                     str(tmp_path / run_id))
        assert code == 0, err
        reports.append(json.loads((tmp_path / run_id / "staleness.json").read_text()))
    parent, replayed = reports
    for key in ("num_generated", "num_trained", "per_sample", "per_token",
                "trajectory_streams"):
        assert replayed[key] == parent[key], key
    # a recorded replay writes batches, not the parent's verdicts: the rest stays unjudged
    assert replayed["num_unused"] == parent["num_generated"] - parent["num_trained"]
    assert replayed["throughput"]["total"] == parent["throughput"]["total"]
    assert parent["num_generated"] > parent["num_trained"] > 0
