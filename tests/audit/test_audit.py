"""`streamrl audit` on a real run: it passes on the log as recorded, and on a copy of that log
with one planted inconsistency it fails, naming the problem (its code) and where it is."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest
from safetensors.torch import load_file, save_file

from streamrl import aio
from streamrl.audit import AuditReport, RunRecords, SampleRow, audit_records, load_run
from streamrl.audit.report import CODES
from streamrl.log import open_log
from streamrl.models.checkpoint import read_safetensors
from streamrl.schemas import (
    BatchFormed,
    CheckpointSaved,
    DeadLetter,
    Event,
    LogPosition,
    WeightVersionAnnounced,
    WeightVersionLoaded,
)
from streamrl.streams import RunStreams, StreamKind
from streamrl.weights.file import FileTransport
from tests.audit.planting import (
    RealRun,
    append_events,
    append_raw,
    audit,
    read_events,
    replace,
    rewrite_events,
    streamrl,
)


def batches(log_dir: Path, run_id: str) -> list[BatchFormed]:
    return [e for _, e in read_events(log_dir, RunStreams(run_id).events)
            if isinstance(e, BatchFormed)]


def assert_names(report: AuditReport, code: str, where: str) -> str:
    """The report fails with `code` at `where`; returns that violation's message."""
    assert not report.ok
    found = [v for v in report.violations if v.code == code]
    assert found, f"no {code} among {[(v.code, v.where) for v in report.violations]}"
    assert any(v.where == where for v in found), f"{code} at {[v.where for v in found]}"
    return next(v.message for v in found if v.where == where)


def test_audit_passes_on_the_real_run(real_run: RealRun) -> None:
    report = audit(real_run.log_dir, real_run.run_id)
    assert report.ok, [(v.code, v.where, v.message) for v in report.violations]
    assert [c.name for c in report.checks] == list(CODES)
    trained = report.check("trained_once").num_checked
    assert trained == 3 * 8  # tiny.toml: 3 versions of 8 samples
    assert report.check("positions").num_checked == trained
    assert report.check("staleness").num_checked == trained
    assert report.check("version_chain").num_checked == 4
    # the initial checkpoint and the two CheckpointSaved (versions 2 and 3) are still stored
    assert report.check("digests").num_checked == 3


def test_audit_passes_on_a_counterfactual_run_that_trained_on_its_parents_stream(
        real_run: RealRun, log_copy: Path) -> None:
    """A derived run's batches point into the parent's trajectories stream; the audit follows
    them there (and still fails a planted double training in the derived run)."""
    out = streamrl("replay", real_run.run_id, "--log", str(log_copy), "--staleness",
                   "MaxLag,max_lag=0", "--as", "derived")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    report = audit(log_copy, "derived")
    assert report.ok, [(v.code, v.where, v.message) for v in report.violations]
    assert report.check("positions").num_checked == 3 * 8
    [first, *_] = batches(log_copy, "derived")
    assert first.positions[0].stream == RunStreams(real_run.run_id).trajectories
    append_events(log_copy, RunStreams("derived").events,
                  [replace(first, batch_id="batch-again", event_id="planted")])
    assert_names(audit(log_copy, "derived"), "sample_trained_twice",
                 f"sample {first.sample_ids[0]}")


def test_a_sample_trained_twice(real_run: RealRun, log_copy: Path) -> None:
    first = batches(log_copy, real_run.run_id)[0]
    again = replace(first, batch_id="batch-again", event_id="planted-again")
    append_events(log_copy, RunStreams(real_run.run_id).events, [again])
    sid = first.sample_ids[0]
    message = assert_names(audit(log_copy, real_run.run_id), "sample_trained_twice",
                           f"sample {sid}")
    assert "batch-again" in message and first.batch_id in message


def test_a_stale_sample_trained_against_the_policy(real_run: RealRun, log_copy: Path) -> None:
    """tiny.toml keeps lag <= 1; plant a version-0 sample into the batch that trained version 2."""
    report = audit(log_copy, real_run.run_id)
    trained = {sid for b in batches(log_copy, real_run.run_id) for sid in b.sample_ids}
    rows = [r for r in _rows(log_copy, real_run.run_id)
            if r.max_version == 0 and r.sample_id not in trained]
    assert report.ok and rows
    stale = rows[0]

    def edit(event: Event) -> Event:
        if isinstance(event, BatchFormed) and event.policy_version == 2:
            return replace(event, sample_ids=(stale.sample_id, *event.sample_ids[1:]),
                           positions=(LogPosition(*stale.position), *event.positions[1:]))
        return event

    rewrite_events(log_copy, RunStreams(real_run.run_id).events, edit)
    message = assert_names(audit(log_copy, real_run.run_id), "stale_sample_trained",
                           f"sample {stale.sample_id}")
    assert "lag 2" in message and "stale_lag" in message


def _rows(log_dir: Path, run_id: str) -> list[SampleRow]:
    async def go() -> list[SampleRow]:
        async with open_log(str(log_dir)) as log:
            return (await load_run(log, run_id)).rows
    return aio.run(go())


@pytest.mark.parametrize(("plant", "code", "where"), [
    ("parent", "parent_mismatch", "audited.weights:0:2"),
    ("gap", "version_gap", "version 2"),
    ("twice", "version_announced_twice", "version 1"),
])
def test_a_broken_parent_chain(real_run: RealRun, log_copy: Path, plant: str, code: str,
                               where: str) -> None:
    weights = RunStreams(real_run.run_id).weights
    if plant == "twice":
        [(_, v1)] = [(p, e) for p, e in read_events(log_copy, weights) if e.version == 1]
        append_events(log_copy, weights, [replace(v1, event_id="planted-v1")])
    else:
        def edit(event: Event) -> Event:
            assert isinstance(event, WeightVersionAnnounced)
            if plant == "parent" and event.version == 2:
                return replace(event, parent=0)
            if plant == "gap" and event.version == 2:  # renumbered: version 2 never announced
                return replace(event, version=4, parent=3)
            return event
        rewrite_events(log_copy, weights, edit)
    assert_names(audit(log_copy, real_run.run_id), code, where)


def test_a_checkpoint_that_no_longer_matches_its_digest(real_run: RealRun, log_copy: Path,
                                                        tmp_path: Path) -> None:
    events = RunStreams(real_run.run_id).events
    [saved] = [e for _, e in read_events(log_copy, events)
               if isinstance(e, CheckpointSaved) and e.version == 3]
    tampered = tmp_path / "v000003"
    tampered.mkdir()
    for f in Path(saved.path).iterdir():
        (tampered / f.name).write_bytes(f.read_bytes())
    tensors = load_file(tampered / "model.safetensors")
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 1e-3  # one tensor changed on disk after it was announced
    save_file(tensors, tampered / "model.safetensors", {"format": "pt"})
    rewrite_events(log_copy, events, lambda e: replace(e, path=str(tampered))
                   if isinstance(e, CheckpointSaved) and e.version == 3 else e)
    message = assert_names(audit(log_copy, real_run.run_id), "digest_mismatch", "version 3")
    assert str(tampered) in message


def test_transport_weights_that_no_longer_match_their_digest(real_run: RealRun,
                                                             log_copy: Path,
                                                             tmp_path: Path) -> None:
    """Version 1 still stored by the file transport, but its tensors changed after the
    announcement (the run released its own files, so the test stores this one)."""
    [saved] = [e for _, e in read_events(log_copy, RunStreams(real_run.run_id).events)
               if isinstance(e, CheckpointSaved) and e.version == 3]
    tensors = read_safetensors(Path(saved.path))
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 1e-3
    with FileTransport(tmp_path / "weights", keep_last=1) as transport:
        stored = transport.publish(1, tensors)
        rewrite_events(log_copy, RunStreams(real_run.run_id).weights,
                       lambda e: replace(e, locator=stored.locator)
                       if isinstance(e, WeightVersionAnnounced) and e.version == 1 else e)
        message = assert_names(audit(log_copy, real_run.run_id), "digest_mismatch", "version 1")
    assert stored.locator in message


def test_a_producer_reporting_an_unannounced_version(real_run: RealRun, log_copy: Path) -> None:
    events = RunStreams(real_run.run_id).events
    [position] = append_events(log_copy, events, [WeightVersionLoaded(
        run_id=real_run.run_id, producer_id="producer-0", version=7, load_ms=1)])
    message = assert_names(audit(log_copy, real_run.run_id), "unannounced_version",
                           f"{events}:0:{position.offset}")
    assert "producer-0" in message and "version 7" in message


def test_a_duplicated_event(real_run: RealRun, log_copy: Path) -> None:
    events = RunStreams(real_run.run_id).events
    original_at, step = next((p, e) for p, e in read_events(log_copy, events)
                             if type(e).__name__ == "TrainStep")
    [position] = append_events(log_copy, events, [step])  # the same event, event id and all
    message = assert_names(audit(log_copy, real_run.run_id), "duplicate_event_id",
                           f"{events}:0:{position.offset}")
    assert f"{events}:0:{original_at.offset}" in message


def test_a_duplicated_trajectory(real_run: RealRun, log_copy: Path) -> None:
    stream = RunStreams(real_run.run_id).trajectories

    async def first_record() -> bytes:
        async with open_log(str(log_copy)) as log:
            return (await log.read(stream, 0, 0, max_records=1))[0].value
    [position] = append_raw(log_copy, stream, [aio.run(first_record())])
    message = assert_names(audit(log_copy, real_run.run_id), "duplicate_group",
                           f"{stream}:0:{position.offset}")
    assert "prompt-0-0" in message


def test_a_position_that_points_at_the_wrong_sample(real_run: RealRun, log_copy: Path) -> None:
    events = RunStreams(real_run.run_id).events
    wrong = LogPosition(RunStreams(real_run.run_id).trajectories, 0, 0)
    target = next(b for b in batches(log_copy, real_run.run_id)
                  if b.positions[-1].offset != 0)
    rewrite_events(log_copy, events, lambda e: replace(e, positions=(*e.positions[:-1], wrong))
                   if isinstance(e, BatchFormed) and e.batch_id == target.batch_id else e)
    message = assert_names(audit(log_copy, real_run.run_id), "position_mismatch",
                           f"{wrong.stream}:0:0")
    assert target.sample_ids[-1] in message and target.batch_id in message


def test_a_trained_sample_that_was_also_dead_lettered(real_run: RealRun,
                                                      log_copy: Path) -> None:
    streams = RunStreams(real_run.run_id)
    at = batches(log_copy, real_run.run_id)[1].positions[0]
    append_events(log_copy, streams.dlq, [DeadLetter(
        run_id=real_run.run_id, reason_code="bad_tokens", detail="planted", component="trainer",
        source=at, original=b"")])
    report = audit(log_copy, real_run.run_id)
    assert_names(report, "dead_lettered_sample_trained", f"{at.stream}:0:{at.offset}")
    assert [(d.reason_code, d.component, d.count) for d in report.dead_letters] == [
        ("bad_tokens", "trainer", 1)]


def test_an_undecodable_record_that_nobody_dead_lettered(real_run: RealRun,
                                                         log_copy: Path) -> None:
    stream = RunStreams(real_run.run_id).trajectories
    [position] = append_raw(log_copy, stream, [b"not arrow at all"])
    assert_names(audit(log_copy, real_run.run_id), "undecodable_record",
                 f"{stream}:0:{position.offset}")


def test_a_prompt_published_twice(real_run: RealRun, log_copy: Path) -> None:
    """A retried publish repeats the event id; a repeated question with a new id is only noted."""
    prompts = RunStreams(real_run.run_id).prompts
    _, prompt = read_events(log_copy, prompts)[0]
    [again, _] = append_events(log_copy, prompts,
                               [prompt, replace(prompt, event_id="same-question")])
    report = audit(log_copy, real_run.run_id)
    message = assert_names(report, "duplicate_event_id", f"{prompts}:0:{again.offset}")
    assert "Prompt" in message
    assert len(report.violations) == 1
    assert any("1 prompt ids" in note for note in report.check("streams").notes)


def test_a_loss_weight_the_policy_did_not_give(real_run: RealRun, log_copy: Path) -> None:
    """MaxLag keeps with weight 1; a batch that recorded 0.5 for a sample trained it otherwise."""
    target = batches(log_copy, real_run.run_id)[0]
    weights = (0.5, *[1.0] * (len(target.sample_ids) - 1))
    rewrite_events(log_copy, RunStreams(real_run.run_id).events,
                   lambda e: replace(e, sample_weights=weights)
                   if isinstance(e, BatchFormed) and e.batch_id == target.batch_id else e)
    assert_names(audit(log_copy, real_run.run_id), "sample_weight_mismatch",
                 f"sample {target.sample_ids[0]}")


def test_a_record_lost_from_the_middle_of_a_stream(real_run: RealRun) -> None:
    """The file log cannot be made to skip an offset through its API, so this drops one record
    from what the audit read, as a log that lost it would present it."""
    async def read() -> RunRecords:
        async with open_log(str(real_run.log_dir)) as log:
            return await load_run(log, real_run.run_id)
    run = aio.run(read())
    events = run.records[StreamKind.EVENTS]
    lost = events[5]
    records = run.records | {StreamKind.EVENTS: events[:5] + events[6:]}
    report = audit_records(msgspec.structs.replace(run, records=records))
    assert_names(report, "offset_gap", f"{lost.stream}:0:{lost.offset + 1}")
    assert [v.code for v in report.violations] == ["offset_gap"]


def test_cli_exit_codes_and_json(real_run: RealRun, log_copy: Path, tmp_path: Path) -> None:
    ok = streamrl("audit", real_run.run_id, "--log", str(real_run.log_dir))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "PASS" in ok.stdout and "FAIL" not in ok.stdout
    append_events(log_copy, RunStreams(real_run.run_id).events, [WeightVersionLoaded(
        run_id=real_run.run_id, producer_id="producer-9", version=99, load_ms=1)])
    out = tmp_path / "audit.json"
    bad = streamrl("audit", real_run.run_id, "--log", str(log_copy), "--json", str(out))
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "FAIL" in bad.stdout and "unannounced_version" in bad.stdout
    report = json.loads(out.read_text())
    assert report["ok"] is False and report["num_violations"] == 1
    assert report["checks"][5]["violations"][0]["code"] == "unannounced_version"
    unknown = streamrl("audit", "no-such-run", "--log", str(real_run.log_dir))
    assert unknown.returncode == 2 and "no-such-run" in unknown.stdout + unknown.stderr
    assert streamrl("audit", "bad.id", "--log", str(real_run.log_dir)).returncode == 2
