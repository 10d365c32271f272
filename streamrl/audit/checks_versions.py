"""Checks on weight versions: an unbroken chain 0..N where version v+1 names v as its parent and
the one batch trained on v; announced digests that match whatever tensors are still stored; and
no producer ever reporting a version that was not announced."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

from torch import Tensor

from streamrl.audit.lineage import RunRecords
from streamrl.audit.report import CheckResult, first, where_position
from streamrl.models.checkpoint import read_safetensors
from streamrl.models.config import ModelConfig
from streamrl.models.lora_files import run_adapter
from streamrl.schemas import BatchFormed, CheckpointSaved, TrainStep, WeightVersionLoaded
from streamrl.streams import StreamKind
from streamrl.weights import (
    WeightTransportError,
    WeightVersionUnavailable,
    open_transport,
    weights_digest,
)
from streamrl.weights.inline import INLINE, load_inline


def check_version_chain(run: RunRecords) -> CheckResult:
    announced = run.announced
    result = CheckResult(name="version_chain", title="versions 0..N form an intact parent chain",
                         num_checked=len(announced))
    by_version: dict[int, list] = defaultdict(list)
    for position, event in announced:
        by_version[event.version].append((position, event))
    batches: dict[int, list[BatchFormed]] = defaultdict(list)
    for _, batch in run.batches:
        batches[batch.policy_version].append(batch)
    steps = Counter(e.version for _, e in run.of(StreamKind.EVENTS, TrainStep))
    base = run.base_version  # 0, or a fork's first version (announced with no parent)
    newest = max(by_version, default=base - 1)
    missing = [v for v in range(base, newest + 1) if v not in by_version]
    if missing:
        result.fail("version_gap", f"versions {first(map(str, missing))} were never announced "
                    f"(the newest is {newest})", f"version {missing[0]}")
    for version, items in sorted(by_version.items()):
        if len(items) > 1:
            result.fail("version_announced_twice", f"version {version} is announced "
                        f"{len(items)} times, at {first(where_position(*p) for p, _ in items)}",
                        f"version {version}")
        position, event = items[0]
        if version < base:
            result.fail("version_gap", f"version {version} is announced, but this fork starts "
                        f"at version {base}", where_position(*position))
        if version <= base:
            if event.parent is not None:
                result.fail("parent_mismatch", f"version {version} is the run's first and "
                            f"should name no parent, but names {event.parent}",
                            where_position(*position))
            continue
        if event.parent != version - 1:
            result.fail("parent_mismatch", f"version {version} names parent {event.parent}, "
                        f"not {version - 1}", where_position(*position))
        trained = batches.get(version - 1, [])
        if not trained:
            result.fail("batch_missing", f"no BatchFormed trained version {version - 1} into "
                        f"{version}", f"version {version}")
        elif len(trained) > 1:
            result.fail("batch_duplicate", f"{len(trained)} batches trained version "
                        f"{version - 1}: {first(b.batch_id for b in trained)}",
                        f"version {version}")
        elif event.batch_ids and event.batch_ids != (trained[0].batch_id,):
            result.fail("announce_batch_mismatch", f"version {version} names batches "
                        f"{list(event.batch_ids)}, but {trained[0].batch_id} trained it",
                        where_position(*position))
        if version not in steps:
            result.fail("train_step_missing", f"no TrainStep recorded version {version}",
                        f"version {version}")
        elif steps[version] > 1:
            result.fail("train_step_duplicate", f"{steps[version]} TrainSteps recorded version "
                        f"{version}", f"version {version}")
    return result


def check_digests(run: RunRecords) -> CheckResult:
    """Recompute `weights_digest` of every version still stored: transport files and segments
    (released versions are gone, and that is fine), checkpoints named by CheckpointSaved, and the
    initial checkpoint (version 0)."""
    announced = {e.version: e for _, e in run.announced}
    result = CheckResult(name="digests", title="announced digests match the stored tensors",
                         num_checked=0)
    gone = opaque = 0
    for version, event in sorted(announced.items()):
        if event.transport == INLINE:  # the tensors are in the announcement (LoRA adapters)
            try:
                tensors = load_inline(event)
            except WeightTransportError as error:
                result.fail("stored_weights_unreadable", f"version {version}: {error}",
                            f"version {version}")
                continue
            result.num_checked += 1
            _compare(result, version, event.digest, weights_digest(tensors), event.locator)
            continue
        try:
            transport = open_transport(event.transport)
        except ValueError:  # a transport that stores nothing readable here (nccl, cuda_ipc)
            opaque += 1
            continue
        try:
            tensors = transport.load(event.locator)
        except WeightVersionUnavailable:
            gone += 1
            continue
        except (WeightTransportError, ValueError, OSError) as error:
            result.fail("stored_weights_unreadable", f"version {version} at {event.locator} "
                        f"cannot be read: {error}", f"version {version}")
            continue
        result.num_checked += 1
        # an FP8 version's transport holds its quantized tensors (streamrl/weights/fp8.py)
        _compare(result, version, event.quantized_digest or event.digest,
                 weights_digest(tensors), event.locator)
    stored = [(0, str(run.ctx.init_checkpoint), None)] + [
        (e.version, e.path, e) for _, e in run.of(StreamKind.EVENTS, CheckpointSaved)]
    for version, path, saved in stored:
        expected = announced.get(version)
        if expected is None:
            continue  # reported by reported_versions
        if saved is not None and saved.digest != expected.digest:
            result.fail("digest_mismatch", f"CheckpointSaved for version {version} records "
                        f"digest {saved.digest[:16]}…, the announcement "
                        f"{expected.digest[:16]}…", f"version {version}")
        if not Path(path).is_dir():
            gone += 1
            continue
        try:
            digest = weights_digest(_version_tensors(run, Path(path)))
        except (OSError, ValueError) as error:
            result.fail("stored_weights_unreadable", f"checkpoint {path} of version {version} "
                        f"cannot be read: {error}", f"version {version}")
            continue
        result.num_checked += 1
        _compare(result, version, expected.digest, digest, path)
    result.notes.append(f"{gone} stored copies no longer exist (released or removed)")
    if opaque:
        result.notes.append(f"{opaque} versions on transports that cannot be read back here")
    return result


def _compare(result: CheckResult, version: int, expected: str, actual: str, where: str) -> None:
    if actual != expected:
        result.fail("digest_mismatch", f"version {version}: the tensors at {where} hash to "
                    f"{actual[:16]}…, announced {expected[:16]}…", f"version {version}")


def check_reported_versions(run: RunRecords) -> CheckResult:
    """A fork's carried trajectories were sampled by its parent's versions up to the fork
    version; those count as announced when the parent's weights stream announced them."""
    announced = {e.version for _, e in run.announced} | run.inherited_versions
    result = CheckResult(name="reported_versions",
                         title="every version a producer reports was announced", num_checked=0)
    for position, event in run.of(StreamKind.EVENTS, WeightVersionLoaded):
        result.num_checked += 1
        if event.version not in announced:
            result.fail("unannounced_version", f"{event.producer_id} reports loading version "
                        f"{event.version}, which was never announced",
                        where_position(*position))
    for row in run.rows:
        result.num_checked += 1
        bad = sorted({row.policy_version, *row.response_versions} - announced)
        if bad:
            result.fail("unannounced_version", f"sample {row.sample_id} from "
                        f"{row.producer_id} was generated with version(s) {bad}, never "
                        f"announced", f"sample {row.sample_id} at {where_position(*row.position)}")
    for _, saved in run.of(StreamKind.EVENTS, CheckpointSaved):
        if saved.version not in announced:
            result.fail("unannounced_version", f"a checkpoint of version {saved.version} was "
                        f"saved, but that version was never announced",
                        f"version {saved.version}")
    return result


def _version_tensors(run: RunRecords, path: Path) -> dict[str, Tensor]:
    """What a checkpoint holds of its version: the weights, or a LoRA run's adapter (the one
    saved there, or for the initial checkpoint the run's starting adapter)."""
    lora = run.ctx.config.trainer.lora
    if lora is None:
        return read_safetensors(path)
    return run_adapter(path, ModelConfig.from_file(path), lora.spec(), lora.init)
