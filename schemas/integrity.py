"""End-to-end integrity of a trajectory record: a digest of its value bytes in a record header.

The producer computes `payload_digest(value)` over the exact bytes it appends and sends it as the
record header `streamrl-digest` (`digest_headers`); every reader checks it before decoding
(`check_payload_digest`, called by `decode_trajectories(..., digest=...)`). A record whose bytes
changed after the producer made them (a disk, a network card, a copy tool) is refused with reason
`digest_mismatch` even when the changed bytes are still valid Arrow that would train, so it goes
to the run's dead-letter stream with its original bytes, never into a batch.

    streamrl-digest: b"crc32c:1a2b3c4d"     algorithm name, ":", 8 lowercase hex digits

Why CRC-32C: it detects every burst error up to 32 bits (a flipped bit, a torn word) and misses
other random corruption with probability 2**-32 per record; it runs at several GB/s (hardware
instructions; about 12x blake2b here), so it costs nothing next to encoding. It is a checksum,
not a signature: anyone who can write to the log can recompute it, so it guards against accident,
not against an attacker (the log's ACLs do that: docs/kafka-security.md).

Records without the header (written before it existed) are accepted unchecked. A header naming
another algorithm is refused (`digest_unsupported`): a reader must know how to check a digest
before writers start sending it.
"""

from __future__ import annotations

from collections.abc import Sequence

from crc32c import crc32c

from streamrl.schemas.errors import TrajectoryDecodeError

DIGEST_HEADER = "streamrl-digest"
ALGORITHM = "crc32c"
_PREFIX = b"crc32c:"


def payload_digest(value: bytes | bytearray | memoryview) -> bytes:
    """The header value for `value`: b"crc32c:" + 8 lowercase hex digits."""
    return _PREFIX + b"%08x" % crc32c(value)


def digest_headers(value: bytes | bytearray | memoryview) -> tuple[tuple[str, bytes], ...]:
    """The record headers a trajectory record is appended with."""
    return ((DIGEST_HEADER, payload_digest(value)),)


def header_digest(headers: Sequence[tuple[str, bytes]]) -> bytes | None:
    """The `streamrl-digest` header among a record's headers, or None."""
    for name, value in headers:
        if name == DIGEST_HEADER:
            return value
    return None


def check_payload_digest(value: bytes | bytearray | memoryview, digest: bytes | None) -> None:
    """Raise `TrajectoryDecodeError` (`digest_mismatch` or `digest_unsupported`) unless `value`
    hashes to `digest`; `None` (no header, an older writer) passes."""
    if digest is None:
        return
    where = f"record header {DIGEST_HEADER}"
    digest = bytes(digest)
    if not digest.startswith(_PREFIX) or len(digest) != len(_PREFIX) + 8:
        raise TrajectoryDecodeError(
            f"{digest[:40]!r} is not a {ALGORITHM} digest (b'{ALGORITHM}:' + 8 hex digits); "
            f"this reader checks {ALGORITHM} only", where=where, reason_code="digest_unsupported")
    actual = payload_digest(value)
    if actual != digest:
        raise TrajectoryDecodeError(
            f"the record's bytes hash to {actual.decode()}, the producer sent "
            f"{digest.decode(errors='replace')}: changed after it was written",
            where=where, reason_code="digest_mismatch")
