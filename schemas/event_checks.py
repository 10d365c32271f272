"""Value checks for event `__post_init__`s, raising `EventDecodeError` with what and where."""

from __future__ import annotations

import msgspec

from streamrl.schemas.errors import EventDecodeError

_HEX = frozenset("0123456789abcdef")
SHA256_HEX_LEN = 64


def check_that(ok: bool, event: msgspec.Struct, field: str, what: str, reason_code: str) -> None:
    if not ok:
        name = type(event).__name__
        raise EventDecodeError(f"{name}.{field} {what}", where=f"{name}.{field}",
                               reason_code=reason_code)


def check_non_negative(event: msgspec.Struct, *fields: str) -> None:
    for field in fields:
        value = getattr(event, field)
        check_that(value >= 0, event, field, f"must be >= 0, got {value}", "negative_value")


def check_digest(event: msgspec.Struct, field: str) -> None:
    value = getattr(event, field)
    check_that(len(value) == SHA256_HEX_LEN and set(value) <= _HEX, event, field,
               f"must be {SHA256_HEX_LEN} lowercase hex characters (sha256)", "bad_digest")
