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
