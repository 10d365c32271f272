"""Control events: every type round-trips on its stream; malformed input is an EventDecodeError."""

from __future__ import annotations

import hashlib
from typing import get_args

import msgspec
import pytest

from streamrl.schemas import (
    BatchFormed,
    CheckpointSaved,
    DeadLetter,
    EvalResult,
    Event,
    EventDecodeError,
    LogPosition,
    ProducerJoined,
    ProducerLeft,
    Prompt,
    Rejected,
    RunStarted,
    ScaleRequested,
    Staleness,
    StreamKind,
    TrainStep,
    WeightVersionAnnounced,
    WeightVersionLoaded,
    decode_event,
    encode_event,
)
from streamrl.schemas.event_codec import STREAM_UNIONS

DIGEST = hashlib.sha256(b"weights").hexdigest()
RUN = "run-7"

EVENTS: list[tuple[StreamKind, Event]] = [
    ("prompts", Prompt(run_id=RUN, prompt_id="p1", tokens=(1, 2, 3), num_samples=8,
                       metadata={"answer": "42", "difficulty": 0.3})),
    ("prompts", Prompt(run_id=RUN, prompt_id="p2", text="What is 6 x 7?")),
    ("weights", WeightVersionAnnounced(run_id=RUN, version=4, parent=3, digest=DIGEST,
                                       num_bytes=1 << 30, locator="/dev/shm/w4",
                                       transport="shm", batch_ids=("b7", "b8"))),
    ("weights", WeightVersionAnnounced(run_id=RUN, version=0, parent=None, digest=DIGEST,
                                       num_bytes=10, locator="file:///w0", transport="file")),
    ("events", RunStarted(run_id=RUN, config={"lr": 1e-6, "model": {"layers": 2}}, seed=1,
                          streamrl_version="0.1.0", recipe="gsm8k-tiny")),
    ("events", RunStarted(run_id=RUN, config=b"lr = 1e-6\n", seed=1, streamrl_version="0.1.0",
                          recipe="gsm8k-tiny")),
    ("events", WeightVersionLoaded(run_id=RUN, producer_id="p0", version=4, load_ms=120)),
    ("events", BatchFormed(run_id=RUN, batch_id="b8", sample_ids=("s1", "s2"),
                           positions=(LogPosition("trajectories", 0, 17),
                                      LogPosition("trajectories", 1, 3)),
                           policy_version=4, staleness=Staleness(min=0, max=2, mean=0.5))),
    ("events", TrainStep(run_id=RUN, step=8, version=5, metrics={"loss": 0.25, "kl": 0.01})),
    ("events", CheckpointSaved(run_id=RUN, version=5, path="/ckpt/5", digest=DIGEST)),
    ("events", ProducerJoined(run_id=RUN, producer_id="p0", host="h1", pid=4242)),
    ("events", ProducerLeft(run_id=RUN, producer_id="p0", host="h1", pid=4242, reason="crash")),
    ("events", Rejected(run_id=RUN, subject="s9", reason_code="too_stale", detail="lag 5 > 4")),
    ("events", ScaleRequested(run_id=RUN, num_producers=4, requested_by="streamrl scale")),
    ("events", EvalResult(run_id=RUN, producer_id="producer-0", version=10, num_prompts=32,
                          num_samples=4, mean_reward=0.5, pass_at={1: 0.5, 4: 0.75})),
    ("dlq", DeadLetter(run_id=RUN, reason_code="nonfinite_float", detail="row 0 ...",
                       component="trainer", source=LogPosition("trajectories", 2, 99),
                       original=b"\x00\xff raw")),
    ("dlq", DeadLetter(run_id=RUN, reason_code="malformed", detail="", component="producer",
                       source=None, original=b"")),
]


@pytest.mark.parametrize(("kind", "event"), EVENTS, ids=[type(e).__name__ for _, e in EVENTS])
def test_every_event_roundtrips_on_its_stream(kind: StreamKind, event: Event) -> None:
    decoded = decode_event(encode_event(event), kind)
    assert decoded == event and type(decoded) is type(event)


def test_events_get_unique_ids_and_a_timestamp() -> None:
    a, b = (TrainStep(run_id=RUN, step=1, version=1) for _ in range(2))
    assert a.event_id != b.event_id and len(a.event_id) == 32 and a.time_ms > 1_600_000_000_000


def test_unknown_fields_from_a_newer_writer_are_ignored() -> None:
    newer = msgspec.msgpack.encode({"type": "train_step", "run_id": RUN, "event_id": "e1",
                                    "time_ms": 5, "step": 1, "version": 2, "grad_norm_p99": 3.5})
    assert decode_event(newer, "events") == TrainStep(run_id=RUN, event_id="e1", time_ms=5,
                                                      step=1, version=2)


def test_dispatch_with_match() -> None:
    event = decode_event(encode_event(TrainStep(run_id=RUN, step=3, version=4)), "events")
    match event:
        case TrainStep(step=step, version=version):
            assert (step, version) == (3, 4)
        case _:
            pytest.fail("not a TrainStep")


def raw(**fields: object) -> bytes:
    return msgspec.msgpack.encode({"run_id": RUN, **fields})


def deeply_nested() -> bytes:
    """A prompt whose metadata value is 100,000 nested arrays: must not blow the stack."""
    data = raw(type="prompt", prompt_id="p", text="t", metadata={"deep": 7})
    at = data.index(b"deep") + 4
    return data[:at] + b"\x91" * 100_000 + data[at:]


@pytest.mark.parametrize(("data", "kind", "code", "where"), [
    (raw(type="train_step", step="one", version=1), "events", "invalid_field", "$.step"),
    (raw(type="train_step", version=1), "events", "missing_field", "$"),
    (raw(type="no_such_event"), "events", "unknown_tag", "$.type"),
    (raw(step=1, version=1), "events", "missing_field", "$"),
    # A weights event on the events stream is as wrong as an unknown one.
    (encode_event(EVENTS[2][1]), "events", "unknown_tag", "$.type"),
    (raw(type="train_step", step=-1, version=1), "events", "negative_value", "TrainStep.step"),
    (raw(type="weight_version_announced", version=3, parent=3, digest=DIGEST, num_bytes=1,
         locator="x", transport="shm"), "weights", "bad_version", "WeightVersionAnnounced.parent"),
    (raw(type="weight_version_announced", version=3, parent=2, digest="abc", num_bytes=1,
         locator="x", transport="shm"), "weights", "bad_digest", "WeightVersionAnnounced.digest"),
    (raw(type="prompt", prompt_id="p"), "prompts", "bad_prompt", "Prompt.tokens"),
    (raw(type="eval_result", producer_id="p0", version=2, num_prompts=1, num_samples=2,
         mean_reward=0.5, pass_at={4: 0.5}), "events", "bad_eval", "EvalResult.pass_at"),
    (raw(type="batch_formed", batch_id="b", positions=[["t", 0, 1]], sample_ids=[],
         policy_version=1, staleness={"min": 0, "max": 0, "mean": 0.0}), "events",
     "length_mismatch", "BatchFormed.positions"),
    (b"", "events", "malformed", "message"),
    (b"\xc1\xc1", "dlq", "malformed", "message"),
    (deeply_nested(), "prompts", "malformed", "message"),
    (msgspec.msgpack.encode([1, 2, 3]), "prompts", "invalid_field", "$"),
])
def test_malformed_events_raise_event_decode_error(data: bytes, kind: StreamKind, code: str,
                                                   where: str) -> None:
    with pytest.raises(EventDecodeError) as info:
        decode_event(data, kind)
    assert (info.value.reason_code, info.value.where) == (code, where)


def test_invalid_values_are_refused_at_construction_too() -> None:
    with pytest.raises(EventDecodeError) as info:
        CheckpointSaved(run_id=RUN, version=1, path="/c", digest=DIGEST.upper())
    assert info.value.reason_code == "bad_digest"


def test_oversized_events_are_refused_unread() -> None:
    data = encode_event(TrainStep(run_id=RUN, step=1, version=1))
    with pytest.raises(EventDecodeError) as info:
        decode_event(data, "events", max_bytes=len(data) - 1)
    assert info.value.reason_code == "too_large"


def test_unknown_stream_kind_is_a_caller_bug() -> None:
    with pytest.raises(ValueError, match="unknown stream kind"):
        decode_event(b"", "trajectories")  # type: ignore[arg-type]


def test_events_from_an_older_writer_get_defaults_for_newer_fields() -> None:
    # An older writer knew neither `reason` nor `event_id`/`time_ms`: defaults fill them in.
    older = msgspec.msgpack.encode({"type": "producer_left", "run_id": RUN, "producer_id": "p0",
                                    "host": "h1", "pid": 7})
    event = decode_event(older, "events")
    assert isinstance(event, ProducerLeft)
    assert event.reason == ""
    assert len(event.event_id) == 32


WIRE_TAGS = {
    Prompt: "prompt", WeightVersionAnnounced: "weight_version_announced",
    RunStarted: "run_started", WeightVersionLoaded: "weight_version_loaded",
    BatchFormed: "batch_formed", TrainStep: "train_step", CheckpointSaved: "checkpoint_saved",
    ProducerJoined: "producer_joined", ProducerLeft: "producer_left", Rejected: "rejected",
    DeadLetter: "dead_letter", ScaleRequested: "scale_requested", EvalResult: "eval_result",
}


def test_wire_tags_are_stable_unique_and_each_on_one_stream() -> None:
    assert set(Event.__subclasses__()) == set(WIRE_TAGS)  # a new event needs a tag entry here
    assert {cls: cls.__struct_config__.tag for cls in WIRE_TAGS} == WIRE_TAGS
    assert len(set(WIRE_TAGS.values())) == len(WIRE_TAGS)
    members = [get_args(union) or (union,) for union in STREAM_UNIONS.values()]
    for cls in WIRE_TAGS:
        assert sum(cls in types for types in members) == 1, cls
