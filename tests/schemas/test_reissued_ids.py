"""A prompt that keeps coming back (requeued as stale, handed over on scale-down) keeps a valid,
unique event id: the id once grew by a suffix per reissue and broke the 128-character limit,
crashing the trainer of a run with many stale groups."""

from __future__ import annotations

from streamrl.schemas import Prompt, decode_event, encode_event
from streamrl.schemas.ids import original_event_id, reissued_event_id


def test_a_prompt_reissued_a_thousand_times_still_encodes_with_a_unique_id() -> None:
    prompt = Prompt(run_id="r", prompt_id="p0", text="1+1=", num_samples=4)
    seen = {prompt.event_id}
    for i in range(1000):
        how = "r" if i % 3 else "h"
        prompt = Prompt(run_id="r", prompt_id="p0", text="1+1=", num_samples=4,
                        event_id=reissued_event_id(prompt.event_id, how, i % 16, 1000 + i))
        assert decode_event(encode_event(prompt), "prompts") == prompt
        assert prompt.event_id not in seen
        seen.add(prompt.event_id)
    first = next(iter(seen - {prompt.event_id}))
    assert original_event_id(prompt.event_id) == original_event_id(first)
    assert len(prompt.event_id) <= 64


def test_original_ids_are_left_alone() -> None:
    for event_id in ("0123abcd", "a-b", "x-r1", "x-q1-2", "x-r-2"):
        assert original_event_id(event_id) == event_id
