"""The contract between producers and consumers: the trajectory Arrow schema and the control events.

Nothing else crosses the producer/consumer boundary. Trajectories: build rows as `Sample`s,
`samples_to_batch`, `encode_trajectories`; read with `decode_trajectories` (untrusted bytes in, a
v1 batch or a `DecodeError` out) and `batch_to_samples`. Events: `encode_event` / `decode_event`
with one tagged union per stream. Evolution rules: docs/schema-evolution.md.
"""

from streamrl.schemas.checks import check_batch
from streamrl.schemas.codec import decode_trajectories, encode_trajectories
from streamrl.schemas.compat import check_compatible, conform
from streamrl.schemas.errors import (
    DecodeError,
    EventDecodeError,
    SchemaIncompatibleError,
    TrajectoryDecodeError,
)
from streamrl.schemas.event_codec import (
    DlqEvent,
    EventsStreamEvent,
    PromptStreamEvent,
    StreamKind,
    WeightsStreamEvent,
    decode_event,
    encode_event,
)
from streamrl.schemas.events import (
    BatchFormed,
    CheckpointSaved,
    DeadLetter,
    EvalResult,
    Event,
    LogPosition,
    ProducerJoined,
    ProducerLeft,
    Prompt,
    Rejected,
    RunParent,
    RunStarted,
    ScaleRequested,
    Staleness,
    TrainStep,
    WeightVersionAnnounced,
    WeightVersionLoaded,
)
from streamrl.schemas.limits import DEFAULT_LIMITS, DecodeLimits
from streamrl.schemas.sample import Sample, batch_to_samples, samples_to_batch
from streamrl.schemas.trajectory import (
    FINISH_REASONS,
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    SCHEMA_VERSION,
    TRAJECTORY_SCHEMA,
)

__all__ = [
    "DEFAULT_LIMITS", "FINISH_REASONS", "OPTIONAL_COLUMNS", "REQUIRED_COLUMNS", "SCHEMA_VERSION",
    "TRAJECTORY_SCHEMA", "BatchFormed", "CheckpointSaved", "DeadLetter", "DecodeError",
    "DecodeLimits", "DlqEvent", "EvalResult", "Event", "EventDecodeError", "EventsStreamEvent",
    "LogPosition",
    "ProducerJoined", "ProducerLeft", "Prompt", "PromptStreamEvent", "Rejected", "RunParent",
    "RunStarted",
    "Sample", "ScaleRequested", "SchemaIncompatibleError", "Staleness", "StreamKind", "TrainStep",
    "TrajectoryDecodeError", "WeightVersionAnnounced", "WeightVersionLoaded",
    "WeightsStreamEvent", "batch_to_samples", "check_batch", "check_compatible", "conform",
    "decode_event", "decode_trajectories", "encode_event", "encode_trajectories",
    "samples_to_batch",
]
