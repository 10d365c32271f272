"""Control events: small, frozen, tagged msgspec structs, one tagged union per stream.

Every event has `event_id` (uuid4 hex, the de-duplication key: a retried publish reuses it),
`run_id` and `time_ms` (wall clock, informational only: replay orders by log position, never by
time). Structs tolerate unknown fields so an older reader can read a newer writer's events; new
fields always get defaults. Wire tags are explicit snake_case strings, so renaming a class never
changes the bytes; a tag is never reused for a different event. Values msgspec's types cannot
express (non-negative versions, sha256 digests) are checked in `__post_init__`, which runs both on
construction and on decode and raises `EventDecodeError`.
"""

from __future__ import annotations

import math
import time
import uuid
from typing import Any

import msgspec

from streamrl.schemas.event_checks import check_digest, check_non_negative, check_that


def _new_event_id() -> str:
    return uuid.uuid4().hex


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Event(msgspec.Struct, kw_only=True, frozen=True, tag_field="type"):
    """Fields every event carries."""

    run_id: str
    event_id: str = msgspec.field(default_factory=_new_event_id)
    time_ms: int = msgspec.field(default_factory=_now_ms)

    def __post_init__(self) -> None:
        check_that(0 < len(self.event_id) <= 128, self, "event_id", "must be 1-128 characters",
                   "bad_event_id")
        check_non_negative(self, "time_ms")


class LogPosition(msgspec.Struct, frozen=True, array_like=True):
    """An exact position in the log; encoded as a 3-element array to keep BatchFormed small."""

    stream: str
    partition: int
    offset: int


class Staleness(msgspec.Struct, kw_only=True, frozen=True):
    """Versions behind the trained policy, over the samples of one batch."""

    min: int
    max: int
    mean: float


# --- prompts stream ---------------------------------------------------------------------------

class Prompt(Event, tag="prompt"):
    """One prompt to sample `num_samples` responses for; exactly one of `tokens` / `text`."""

    prompt_id: str
    tokens: tuple[int, ...] | None = None
    text: str | None = None
    metadata: dict[str, Any] = {}  # e.g. the reference answer a reward function needs
    num_samples: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        check_that((self.tokens is None) != (self.text is None), self, "tokens",
                   "exactly one of tokens and text must be set", "bad_prompt")
        check_that(self.num_samples >= 1, self, "num_samples", "must be >= 1", "bad_prompt")
        check_that(self.tokens is None or all(t >= 0 for t in self.tokens), self, "tokens",
                   "token ids must be >= 0", "bad_prompt")


# --- weights stream ---------------------------------------------------------------------------

class WeightVersionAnnounced(Event, tag="weight_version_announced"):
    """A new weight version exists; the tensors travel over `transport` at `locator`."""

    version: int
    parent: int | None  # None only for the initial weights
    digest: str  # sha256 hex of the serialized weights
    num_bytes: int
    locator: str
    transport: str  # "shm", "file", "cuda_ipc", "nccl", ...
    batch_ids: tuple[str, ...] = ()  # the BatchFormed batches trained into this version
    payload: bytes | None = None  # transport "inline": the tensors as safetensors bytes
    # The transport holds a quantized copy (streamrl/weights/fp8.py; `digest` stays the
    # trainer's own tensors'): the digest of what it holds, and the scheme, e.g.
    # "float8_e4m3fn/block128x128". None: the transport holds the trainer's tensors.
    quantized_digest: str | None = None
    quantization: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_non_negative(self, "version", "num_bytes")
        check_digest(self, "digest")
        if self.quantized_digest is not None:
            check_digest(self, "quantized_digest")
        check_that(self.parent is None or 0 <= self.parent < self.version, self, "parent",
                   f"must be older than version {self.version}", "bad_version")


# --- events stream ----------------------------------------------------------------------------

class RunParent(msgspec.Struct, frozen=True, kw_only=True):
    """Where a derived run comes from: `run_id` at weight `version`; `relation` says how."""

    run_id: str
    version: int
    relation: str  # "fork" | "replay" | "counterfactual" | "rereward"


class RunStarted(Event, tag="run_started"):
    config: dict[str, Any] | bytes  # JSON-compatible dict, or the raw bytes of the config file
    seed: int
    streamrl_version: str
    recipe: str
    parent: RunParent | None = None  # set for forks, replays and counterfactual re-trainings

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.parent is not None:
            check_non_negative(self.parent, "version")


class WeightVersionLoaded(Event, tag="weight_version_loaded"):
    producer_id: str
    version: int
    load_ms: int

    def __post_init__(self) -> None:
        super().__post_init__()
        check_non_negative(self, "version", "load_ms")


class BatchFormed(Event, tag="batch_formed"):
    """The trainer took exactly these log positions (one per sample, same order as sample_ids)
    to train `policy_version` on; the lineage record that makes replay exact."""

    batch_id: str
    positions: tuple[LogPosition, ...]
    sample_ids: tuple[str, ...]
    policy_version: int
    staleness: Staleness
    # The staleness policy's loss weight per sample (same order); empty means all 1.0.
    sample_weights: tuple[float, ...] = ()
    # Per trajectories partition read so far: the offset after the last record judged for this
    # batch, committed with it (every record before it is decided). Empty in runs made before
    # trajectories had several partitions (there: the offset after the last position).
    consumed_to: tuple[LogPosition, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        check_non_negative(self, "policy_version")
        check_that(not self.sample_weights or len(self.sample_weights) == len(self.sample_ids),
                   self, "sample_weights", f"{len(self.sample_weights)} weights for "
                   f"{len(self.sample_ids)} sample_ids", "length_mismatch")
        check_that(len(self.positions) == len(self.sample_ids), self, "positions",
                   f"{len(self.positions)} positions for {len(self.sample_ids)} sample_ids",
                   "length_mismatch")
        check_that(all(p.partition >= 0 and p.offset >= 0 for p in self.positions), self,
                   "positions", "partitions and offsets must be >= 0", "negative_value")
        s = self.staleness
        check_that(0 <= s.min <= s.max, self, "staleness", "need 0 <= min <= max", "bad_staleness")


class TrainStep(Event, tag="train_step"):
    step: int
    version: int  # the weight version this step produced
    metrics: dict[str, float] = {}  # NaN allowed: a diverged loss is worth recording

    def __post_init__(self) -> None:
        super().__post_init__()
        check_non_negative(self, "step", "version")


class CheckpointSaved(Event, tag="checkpoint_saved"):
    version: int
    path: str
    digest: str

    def __post_init__(self) -> None:
        super().__post_init__()
        check_non_negative(self, "version")
        check_digest(self, "digest")


class ProducerJoined(Event, tag="producer_joined"):
    producer_id: str
    host: str
    pid: int
    reason: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_non_negative(self, "pid")


class ProducerLeft(Event, tag="producer_left"):
    producer_id: str
    host: str
    pid: int
    reason: str = ""  # "shutdown", "crash", "scaled_down", ...

    def __post_init__(self) -> None:
        super().__post_init__()
        check_non_negative(self, "pid")


class ScaleRequested(Event, tag="scale_requested"):
    """Someone (`streamrl scale`) asked for `num_producers` producers; the run's supervisor
    follows the events stream and acts on the newest request."""

    num_producers: int
    requested_by: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_non_negative(self, "num_producers")


class Rejected(Event, tag="rejected"):
    """Something was deliberately not used (a staleness drop, a throttle); not an error."""

    subject: str  # usually a sample_id
    reason_code: str
    detail: str = ""


class EvalResult(Event, tag="eval_result"):
    """The policy at `version` on the run's eval file (`[eval] every_versions`): every prompt
    sampled `num_samples` times (seeded by run seed, version and prompt), scored with the run's
    reward. Evaluation only: none of these samples is written to the trajectories stream."""

    producer_id: str
    version: int
    num_prompts: int
    num_samples: int  # n: samples per prompt
    mean_reward: float  # mean@n: the mean reward over all samples
    pass_at: dict[int, float]  # k -> unbiased pass@k (Codex paper), 1 <= k <= num_samples
    pass_threshold: float = 1.0  # a sample passes when its reward >= this
    num_reward_failures: int = 0  # samples whose reward call timed out or raised (reward 0)
    duration_ms: int = 0  # wall time of the evaluation, generation and rewards

    def __post_init__(self) -> None:
        super().__post_init__()
        check_non_negative(self, "version", "num_reward_failures", "duration_ms")
        check_that(self.num_prompts >= 1 and self.num_samples >= 1, self, "num_samples",
                   "num_prompts and num_samples must be >= 1", "bad_eval")
        check_that(math.isfinite(self.mean_reward), self, "mean_reward", "must be finite",
                   "bad_eval")
        check_that(all(1 <= k <= self.num_samples for k in self.pass_at), self, "pass_at",
                   f"k must be in 1..num_samples ({self.num_samples})", "bad_eval")
        check_that(all(0.0 <= v <= 1.0 for v in self.pass_at.values()), self, "pass_at",
                   "values must be in [0, 1]", "bad_eval")

# --- dlq stream -------------------------------------------------------------------------------

class DeadLetter(Event, tag="dead_letter"):
    """Input that a component refused, with why and the original bytes, for operators."""

    reason_code: str
    detail: str
    component: str
    source: LogPosition | None
    original: bytes
