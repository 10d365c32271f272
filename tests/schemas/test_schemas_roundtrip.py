"""Realistic rows survive Sample -> batch -> bytes -> batch -> Sample unchanged."""

from __future__ import annotations

from datetime import datetime

import msgspec
import numpy as np
import pyarrow as pa
import pytest

from streamrl.schemas import (
    TRAJECTORY_SCHEMA,
    Sample,
    batch_to_samples,
    decode_trajectories,
    encode_trajectories,
    samples_to_batch,
)
from streamrl.schemas.testing import MoeShape, make_group, make_sample


def assert_same(expected: list[Sample], actual: list[Sample]) -> None:
    assert len(expected) == len(actual)
    for want, got in zip(expected, actual, strict=True):
        for name in Sample.__struct_fields__:
            a, b = getattr(want, name), getattr(got, name)
            if isinstance(a, np.ndarray):
                assert b.dtype == a.dtype and b.shape == a.shape, name
                np.testing.assert_array_equal(b, a, err_msg=name)
            else:
                assert b == a, (name, a, b)


def roundtrip(samples: list[Sample], **decode_kwargs: object) -> list[Sample]:
    data = encode_trajectories(samples_to_batch(samples))
    batch = decode_trajectories(data, **decode_kwargs)  # type: ignore[arg-type]
    assert batch.schema.equals(TRAJECTORY_SCHEMA, check_metadata=True)
    return batch_to_samples(batch)


def test_dense_group_roundtrips_exactly() -> None:
    samples = make_group(np.random.default_rng(0), group_size=8)
    assert_same(samples, roundtrip(samples, vocab_size=151_936))


def test_moe_rows_keep_routing_shape_and_narrow_type() -> None:
    rng = np.random.default_rng(1)
    samples = make_group(rng, group_size=4, moe=MoeShape(num_layers=48, top_k=8, num_experts=128))
    batch = samples_to_batch(samples)
    assert batch.column("routed_experts").type == pa.list_(pa.uint8())
    assert batch.column("routed_experts_wide").null_count == len(samples)
    assert batch.column("moe_num_layers").to_pylist() == [48] * 4
    back = roundtrip(samples)
    assert back[0].routed_experts is not None and back[0].routed_experts.shape == (96, 48, 8)
    assert_same(samples, back)


def test_many_experts_use_the_wide_column_when_a_top_k_repeats_an_id() -> None:
    # A row that is not a set in some (token, layer) cannot be packed: it keeps plain uint16 ids.
    samples = make_group(np.random.default_rng(2), group_size=2, moe=MoeShape(4, 2, 384))
    for i, s in enumerate(samples):
        routed = s.routed_experts.copy()
        routed[0, 0, 1] = routed[0, 0, 0]
        samples[i] = msgspec.structs.replace(s, routed_experts=routed)
    batch = samples_to_batch(samples)
    assert batch.column("routed_experts_packed").null_count == 2
    assert batch.column("routed_experts").null_count == 2
    assert batch.column("routed_experts_wide").null_count == 0
    assert_same(samples, roundtrip(samples))


def test_dense_and_moe_rows_mix_in_one_batch() -> None:
    rng = np.random.default_rng(3)
    samples = make_group(rng, 2) + make_group(rng, 2, moe=MoeShape(2, 2, 16))
    back = roundtrip(samples)
    assert back[0].routed_experts is None and back[2].routed_experts is not None
    assert_same(samples, back)


def test_long_rows_roundtrip_with_zero_copy_views() -> None:
    # The realistic upper size: 3k tokens, 2k x 48 x 8 routing bytes per row.
    rng = np.random.default_rng(4)
    samples = make_group(rng, 2, num_prompt_tokens=1024, num_response_tokens=2048,
                         moe=MoeShape(48, 8, 256))
    back = roundtrip(samples)
    assert_same(samples, back)
    assert not back[0].response_tokens.flags.writeable  # a view into Arrow memory, not a copy


def test_optional_fields_roundtrip_as_none_and_defaults_fill_versions() -> None:
    sample = msgspec.structs.replace(
        make_sample(np.random.default_rng(5)), reward_details=None, response_versions=None)
    (back,) = roundtrip([sample])
    assert back.reward_details is None
    np.testing.assert_array_equal(back.response_versions,
                                  np.full(len(sample.response_tokens), sample.policy_version))


def test_empty_response_and_empty_batch_are_fine() -> None:
    sample = msgspec.structs.replace(
        make_sample(np.random.default_rng(6)), response_tokens=[], logprobs=[], loss_mask=[],
        response_versions=[], finish_reason="abort")
    (back,) = roundtrip([sample])
    assert back.response_tokens.size == 0 and back.finish_reason == "abort"
    assert roundtrip([]) == []


def test_plain_python_lists_are_accepted() -> None:
    sample = msgspec.structs.replace(
        make_sample(np.random.default_rng(7)), prompt_tokens=[1, 2, 3], response_tokens=[4, 5],
        logprobs=[-0.5, -1.0], loss_mask=[True, False], response_versions=[3, 3])
    (back,) = roundtrip([sample])
    assert back.prompt_tokens.tolist() == [1, 2, 3] and back.logprobs.dtype == np.float32


@pytest.mark.parametrize(("field", "value", "message"), [
    ("prompt_tokens", [1, 1 << 31], "outside"),
    ("response_tokens", [0.5, 1.0], "must be integers"),
    ("loss_mask", [0, 2], "0/1"),
    ("routed_experts", np.zeros((3, 2), np.uint8), "3-D"),
    ("started_at", datetime(2025, 1, 1), "timezone-aware"),
    ("finish_reason", "timeout", "finish_reason"),
])
def test_builder_refuses_values_that_do_not_fit(field: str, value: object, message: str) -> None:
    sample = msgspec.structs.replace(make_sample(np.random.default_rng(8)), **{field: value})
    with pytest.raises(ValueError, match=message):
        samples_to_batch([sample])
