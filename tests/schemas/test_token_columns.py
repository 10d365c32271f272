"""The optional per-token columns `reference_logprobs` and `token_rewards`: they round-trip,
an older writer's batch (without them) still decodes with them null, and a row whose list has
the wrong length or a NaN is refused naming row, column and token."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from streamrl.schemas import (
    TrajectoryDecodeError,
    batch_to_samples,
    decode_trajectories,
    encode_trajectories,
    samples_to_batch,
)
from streamrl.schemas.testing import make_group


def _group(**columns: object) -> list:
    rng = np.random.default_rng(0)
    group = make_group(rng, group_size=3, num_response_tokens=5)
    return [msgspec.structs.replace(s, **columns) if i != 1 else s  # row 1 has neither
            for i, s in enumerate(group)]


def test_token_columns_round_trip_and_unset_rows_read_as_none() -> None:
    ref = np.array([-1.0, -2.0, -0.5, -3.0, -0.25], np.float32)
    rewards = np.array([0, 0, 1, 0, 0.5], np.float32)
    out = batch_to_samples(decode_trajectories(encode_trajectories(samples_to_batch(
        _group(reference_logprobs=ref, token_rewards=rewards)))))
    assert np.array_equal(out[0].reference_logprobs, ref)
    assert np.array_equal(out[2].token_rewards, rewards)
    assert out[1].reference_logprobs is None and out[1].token_rewards is None


def test_an_older_writers_batch_without_the_columns_reads_them_as_null() -> None:
    older = samples_to_batch(_group()).drop_columns(["reference_logprobs", "token_rewards"])
    samples = batch_to_samples(decode_trajectories(encode_trajectories(older)))
    assert all(s.reference_logprobs is None and s.token_rewards is None for s in samples)


@pytest.mark.parametrize(("column", "values", "code", "where"), [
    ("token_rewards", [1.0, 2.0], "length_mismatch", "row 0, column 'token_rewards'"),
    ("reference_logprobs", [-1, -1, np.nan, -1, -1], "nonfinite_float",
     "row 0, column 'reference_logprobs', token 2"),
])
def test_bad_token_columns_are_refused_before_publishing(column: str, values: list[float],
                                                         code: str, where: str) -> None:
    batch = samples_to_batch(_group(**{column: np.array(values, np.float32)}))
    with pytest.raises(TrajectoryDecodeError) as info:
        encode_trajectories(batch)
    assert info.value.reason_code == code and info.value.where == where
