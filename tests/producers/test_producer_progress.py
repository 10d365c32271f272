"""What a producer commits per prompts partition (producers/resume.py), and what the next owner
makes of it, through the real file log: finished prompts past the position are never generated
again, unfinished ones always are, and the record fits every backend's metadata limit."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamrl.log import MAX_METADATA_BYTES, Append, Committed, Record, StreamPartition, open_log
from streamrl.producers.resume import WINDOW, PartitionProgress, decode_done, encode_done

STREAM = "run.prompts"


def records(*offsets: int) -> list[Record]:
    return [Record(stream=STREAM, partition=0, offset=o, value=b"p") for o in offsets]


def test_the_record_round_trips_and_a_full_window_fits_the_metadata_limit() -> None:
    assert encode_done(10, []) == ""
    assert decode_done(10, "", "p[0]") == set()
    done = {11, 12, 19, 400}
    assert decode_done(10, encode_done(10, done), "p[0]") == done
    alternate = set(range(1, WINDOW + 1, 2))  # the worst pattern for a range encoding
    full = set(range(1, WINDOW + 1))
    for case in (alternate, full):
        metadata = encode_done(0, case)
        assert len(metadata.encode()) <= MAX_METADATA_BYTES
        assert decode_done(0, metadata, "p[0]") == case
    assert len(encode_done(1000, {1001, 1005})) < 16  # a few groups in flight: a few bytes


def test_metadata_no_producer_wrote_is_refused_naming_the_partition() -> None:
    with pytest.raises(ValueError, match=r"run.prompts\[3\].*'offsets:1,2'.*done1:"):
        decode_done(0, "offsets:1,2", "run.prompts[3]")
    with pytest.raises(ValueError, match="not a finished-prompts record"):
        decode_done(0, "done1:!!!", "run.prompts[3]")


def test_groups_finishing_out_of_order_hold_the_position_and_are_recorded_past_it() -> None:
    progress = PartitionProgress(0)
    assert [r.offset for r in progress.take(records(0, 1, 2, 3))] == [0, 1, 2, 3]
    position = progress.finishing([2])
    assert position.offset == 0 and decode_done(0, position.metadata, "") == {2}
    progress.finished([2])
    progress.finished([1])
    assert progress.finishing([3]) == Committed(0, encode_done(0, {1, 2, 3}))
    progress.finished([3])
    assert progress.finishing([0]) == Committed(4, "")  # all done: nothing to record
    progress.finished([0])
    assert progress.done == set() and progress.position() == 4


def test_reads_stop_at_the_window_past_an_unfinished_prompt() -> None:
    progress = PartitionProgress(0)
    progress.take(records(0))
    assert progress.room() == WINDOW
    progress.take(records(*range(1, WINDOW + 5)))
    assert progress.next_read == WINDOW + 1 and progress.room() == 0
    progress.finished([0])  # the oldest one finishes: the window moves on
    assert progress.position() == 1 and progress.room() == 1


def test_a_handover_records_requeued_and_finished_prompts_but_not_queued_ones() -> None:
    progress = PartitionProgress(5, done={7})  # restored: 6 unfinished, 7 finished
    progress.take(records(5, 6, 7, 8, 9))
    # 5 and 6 started and requeued, 8 finished, 9 read but never started
    progress.finished([8])
    handed = progress.handed_over(requeued=[5, 6], queued=[9])
    assert handed.offset == 9 and decode_done(9, handed.metadata, "") == set()
    progress = PartitionProgress(0, done={3})
    progress.take(records(0, 1, 2, 3, 4))
    handed = progress.handed_over(requeued=[0], queued=[1, 2, 4])
    assert handed.offset == 1 and decode_done(1, handed.metadata, "") == {3}


async def test_a_restarted_producer_skips_exactly_what_was_committed_finished(
        tmp_path: Path) -> None:
    """Two incarnations over the real file log: the first publishes 1 and 3 of 0..3 (each with
    its commit, in one transaction) and dies; the second generates 0 and 2, nothing else."""
    url = str(tmp_path / "log")
    sp = StreamPartition(STREAM, 0)
    async with open_log(url) as log:
        await log.ensure_stream(STREAM, 1)
        await log.ensure_stream("run.trajectories", 1)
        await log.append_many([Append(stream=STREAM, value=b"p", partition=0)] * 4)
        first = PartitionProgress.restore(await log.committed_with_metadata("producers", *sp),
                                          "x")
        first.take(await log.read(STREAM, 0, first.next_read))
        for offset in (3, 1):
            await log.transact("producers", {sp: first.finishing([offset])},
                               [Append(stream="run.trajectories", value=b"g%d" % offset)])
            first.finished([offset])
    async with open_log(url) as log:  # the restart
        second = PartitionProgress.restore(await log.committed_with_metadata("producers", *sp),
                                           f"{STREAM}[0]")
        taken = second.take(await log.read(STREAM, 0, second.next_read))
        assert [r.offset for r in taken] == [0, 2]
        for offset in (2, 0):
            await log.transact("producers", {sp: second.finishing([offset])}, [])
            second.finished([offset])
        assert await log.committed_with_metadata("producers", *sp) == Committed(4, "")
