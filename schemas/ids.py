"""Stable ids shared by producers and the trainer.

A group (the samples of one prompt) is named after the prompt record it answers, and a sample
after its group and index. Ids are therefore unique within a run, the same when a crashed
producer regenerates the group (so the trainer can drop the duplicate), and they lead back to the
prompt record (so a stale group's prompt can be requeued and an audit can walk the lineage).
"""

from __future__ import annotations


def group_id_for(prompts_partition: int, prompts_offset: int) -> str:
    return f"prompt-{prompts_partition}-{prompts_offset}"


def sample_id_for(group_id: str, index: int) -> str:
    return f"{group_id}-s{index}"


def parse_group_id(group_id: str) -> tuple[int, int]:
    """(prompts partition, prompts offset) of a group id; ValueError for any other string."""
    head, partition, offset = group_id.rsplit("-", 2)
    if head != "prompt" or not partition.isdigit() or not offset.isdigit():
        raise ValueError(f"{group_id!r} is not a group id of the form prompt-<partition>-<offset>")
    return int(partition), int(offset)


def reissued_event_id(event_id: str, how: str, partition: int, offset: int) -> str:
    """The event id of a prompt published again (`how`: "r" requeued by the trainer, "h" handed
    over by a leaving producer) from the record at (partition, offset): the original id plus that
    position. Unique (a record is reissued once), deterministic, and bounded in length however
    often a prompt comes back."""
    return f"{original_event_id(event_id)}-{how}{partition}-{offset}"


def original_event_id(event_id: str) -> str:
    """The id the driver first published a prompt under (before any reissue suffix)."""
    head, sep, tail = event_id.rpartition("-")
    if sep and tail.isdigit():
        base, sep2, mid = head.rpartition("-")
        if sep2 and mid[:1] in ("r", "h") and mid[1:].isdigit():
            return base
    return event_id
