"""Typed errors for everything that crosses the producer/consumer boundary.

A `DecodeError` means "these bytes (or these values) break the contract". Decoders raise it for
untrusted input; encoders and event constructors raise the same classes so a producer learns about
a bad record before it is published, with the same `reason_code` a consumer would have dead-lettered
it under. Every error says what is wrong (`what`), where (`where`, e.g. ``row 3, column 'logprobs',
token 17``) and a short stable `reason_code` that dashboards and the dlq can group by.
"""

from __future__ import annotations


class DecodeError(ValueError):
    """Base class: bytes or values that break the streamrl contract.

    Subclasses `ValueError` so generic input-validation handlers still catch it. `reason_code` is
    part of the contract (dlq records and tests match on it): never reword an existing code.
    """

    def __init__(self, what: str, *, where: str = "", reason_code: str) -> None:
        self.what = what
        self.where = where
        self.reason_code = reason_code
        location = f" (at {where})" if where else ""
        super().__init__(f"{reason_code}: {what}{location}")

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only init would otherwise break pickling across process boundaries
        # (multiprocessing workers, Ray actors report these errors to the driver).
        return (_rebuild, (type(self), self.what, self.where, self.reason_code))


def _rebuild(cls: type[DecodeError], what: str, where: str, reason_code: str) -> DecodeError:
    return cls(what, where=where, reason_code=reason_code)


class TrajectoryDecodeError(DecodeError):
    """A trajectory message (Arrow IPC) is malformed or a row breaks a semantic rule."""


class EventDecodeError(DecodeError):
    """A control event (msgpack) is malformed, of the wrong kind, or has invalid values."""


class SchemaIncompatibleError(DecodeError):
    """A trajectory schema cannot be read as v1: a type changed, a required column is missing or
    renamed, an unknown major version, or extension types."""
