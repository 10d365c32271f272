"""Resource limits for decoding untrusted trajectory bytes."""

from __future__ import annotations

import msgspec

MiB = 1 << 20


class DecodeLimits(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Hard caps applied before and while decoding, so a hostile or corrupted message costs at most
    O(max_message_bytes) memory and time. Defaults fit realistic batches with room to spare: a row
    of 3k tokens with 2k x 48 x 8 routing bytes is ~0.8 MiB."""

    max_message_bytes: int = 256 * MiB
    """Messages larger than this are rejected unread (the Kafka broker default is far smaller)."""
    max_rows: int = 65_536
    """Declared rows in the one record batch."""
    max_tokens_per_row: int = 1 << 20
    """Prompt or response tokens in one row; longer lists are rejected as abusive."""
    max_ipc_messages: int = 16
    """IPC messages in the stream: the schema, a few dictionary batches and one record batch."""

    def __post_init__(self) -> None:
        for name in self.__struct_fields__:
            if getattr(self, name) <= 0:
                raise ValueError(f"DecodeLimits.{name} must be positive, got {getattr(self, name)}")


DEFAULT_LIMITS = DecodeLimits()
