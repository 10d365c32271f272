"""The schema-evolution rules of docs/schema-evolution.md, one test (or more) per rule."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pytest

from streamrl.schemas import (
    TRAJECTORY_SCHEMA,
    SchemaIncompatibleError,
    batch_to_samples,
    check_compatible,
    decode_trajectories,
    encode_trajectories,
    samples_to_batch,
)
from streamrl.schemas.testing import MoeShape, make_group


def v1_batch() -> pa.RecordBatch:
    rng = np.random.default_rng(10)
    return samples_to_batch(make_group(rng, 2) + make_group(rng, 2, moe=MoeShape(2, 2, 8)))


def raw_ipc(batch: pa.RecordBatch) -> bytes:
    """Bytes as a writer that skips `encode_trajectories` would produce them."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


def test_rule1_v1_reader_accepts_a_new_optional_column_and_drops_it() -> None:
    batch = v1_batch()
    entropy = pa.array([[0.1, 0.2]] * batch.num_rows, pa.list_(pa.float32()))
    newer = batch.append_column(pa.field("token_entropy", entropy.type), entropy)
    decoded = decode_trajectories(encode_trajectories(newer))
    assert decoded.schema.equals(TRAJECTORY_SCHEMA)
    assert "token_entropy" not in decoded.schema.names
    assert decoded.column("reward").equals(batch.column("reward"))


def test_rule2_missing_optional_columns_read_as_null() -> None:
    batch = v1_batch()
    older = batch.drop_columns(["reward_details", "moe_num_layers", "moe_top_k",
                                "routed_experts", "routed_experts_wide"])
    decoded = decode_trajectories(encode_trajectories(older))
    assert decoded.schema.equals(TRAJECTORY_SCHEMA)
    assert decoded.column("reward_details").null_count == batch.num_rows
    samples = batch_to_samples(decoded)
    assert all(s.routed_experts is None and s.reward_details is None for s in samples)


def test_rule2_missing_required_column_is_refused() -> None:
    with pytest.raises(SchemaIncompatibleError, match="'seed'") as info:
        encode_trajectories(v1_batch().drop_columns(["seed"]))
    assert info.value.reason_code == "missing_column" and info.value.where == "column 'seed'"


def test_rule3_type_change_is_refused_by_the_encoder_naming_the_column() -> None:
    batch = v1_batch()
    widened = batch.set_column(batch.schema.get_field_index("reward"), "reward",
                               batch.column("reward").cast(pa.float64()))
    with pytest.raises(SchemaIncompatibleError, match="'reward' has type double") as info:
        encode_trajectories(widened)
    assert info.value.reason_code == "type_changed" and "'reward'" in info.value.where


def test_rule3_type_change_in_a_list_column_is_refused() -> None:
    batch = v1_batch()
    index = batch.schema.get_field_index("response_tokens")
    wide = batch.column(index).cast(pa.list_(pa.int64()))
    with pytest.raises(SchemaIncompatibleError, match="response_tokens") as info:
        encode_trajectories(batch.set_column(index, "response_tokens", wide))
    assert info.value.reason_code == "type_changed"


def test_rule3_type_change_is_refused_by_the_decoder_too() -> None:
    batch = v1_batch()
    widened = batch.set_column(batch.schema.get_field_index("seed"), "seed",
                               batch.column("seed").cast(pa.decimal128(21, 0)))
    with pytest.raises(SchemaIncompatibleError, match="'seed'") as info:
        decode_trajectories(raw_ipc(widened))
    assert info.value.reason_code == "type_changed"


def test_rule4_rename_is_refused_and_the_message_names_both_columns() -> None:
    renamed = v1_batch().rename_columns(
        [("score" if n == "reward" else n) for n in TRAJECTORY_SCHEMA.names])
    with pytest.raises(SchemaIncompatibleError, match="'reward' is missing; renamed to 'score'"):
        encode_trajectories(renamed)


def test_rule5_another_major_version_is_refused_both_ways() -> None:
    batch = v1_batch().replace_schema_metadata(
        {"streamrl.schema": "trajectory", "streamrl.schema_version": "2"})
    with pytest.raises(SchemaIncompatibleError) as info:
        encode_trajectories(batch)
    assert info.value.reason_code == "unknown_major_version"
    with pytest.raises(SchemaIncompatibleError) as info:
        decode_trajectories(raw_ipc(batch))
    assert info.value.reason_code == "unknown_major_version"


@pytest.mark.parametrize(("metadata", "code"), [
    (None, "missing_schema_version"),
    ({"streamrl.schema": "trajectory"}, "missing_schema_version"),
    ({"streamrl.schema": "trajectory", "streamrl.schema_version": "one"}, "bad_schema_version"),
    ({"streamrl.schema": "prompts", "streamrl.schema_version": "1"}, "wrong_schema"),
])
def test_rule5_reader_requires_the_version_marker(metadata: dict[str, str] | None,
                                                  code: str) -> None:
    with pytest.raises(SchemaIncompatibleError) as info:
        decode_trajectories(raw_ipc(v1_batch().replace_schema_metadata(metadata)))
    assert info.value.reason_code == code


def test_rule5_encoder_stamps_the_marker_on_unmarked_batches() -> None:
    unmarked = v1_batch().replace_schema_metadata(None)
    decoded = decode_trajectories(encode_trajectories(unmarked))
    assert decoded.schema.metadata == TRAJECTORY_SCHEMA.metadata


def test_rule6_extension_types_are_refused() -> None:
    batch = v1_batch()
    uuids = pa.array([b"0123456789abcdef"] * batch.num_rows, pa.binary(16))
    field = pa.field("trace", uuids.type, metadata={"ARROW:extension:name": "arrow.uuid"})
    with pytest.raises(SchemaIncompatibleError) as info:
        encode_trajectories(batch.append_column(field, uuids))
    assert info.value.reason_code == "extension_type"
    with pytest.raises(SchemaIncompatibleError) as info:
        decode_trajectories(raw_ipc(batch.append_column(field, uuids)))
    assert info.value.reason_code == "extension_type"


def test_a_remembered_compatible_schema_lets_no_changed_schema_through() -> None:
    # Compatibility is remembered per schema so a stream's repeated schema is checked once; a
    # schema that differs in a type, the marker or an extension key must still be checked.
    batch = v1_batch()
    unmarked = batch.replace_schema_metadata(None)
    decode_trajectories(encode_trajectories(unmarked))  # remembered: writer and reader side
    index = batch.schema.get_field_index("reward")
    widened = batch.set_column(index, "reward", batch.column("reward").cast(pa.float64()))
    for encode_error in (lambda: encode_trajectories(widened),
                         lambda: decode_trajectories(raw_ipc(widened))):
        with pytest.raises(SchemaIncompatibleError) as info:
            encode_error()
        assert info.value.reason_code == "type_changed"
    with pytest.raises(SchemaIncompatibleError) as info:  # writers may omit it, readers may not
        decode_trajectories(raw_ipc(unmarked))
    assert info.value.reason_code == "missing_schema_version"
    tagged = batch.schema.field(index).with_metadata({"ARROW:extension:name": "x.evil"})
    with pytest.raises(SchemaIncompatibleError) as info:
        decode_trajectories(raw_ipc(batch.set_column(index, tagged, batch.column(index))))
    assert info.value.reason_code == "extension_type"


def test_a_remembered_schema_does_not_vouch_for_reordered_duplicate_metadata_keys() -> None:
    # Arrow's metadata equality may call two key lists equal that read as different versions
    # (the first of duplicate keys wins); the version must still be read from each schema.
    rng = random.Random(0)

    def with_versions(first: str, second: str) -> pa.Schema:
        keys = [f"k{i:02d}" for i in range(20)] + [
            "streamrl.schema", "streamrl.schema_version", "streamrl.schema_version"]
        rng.shuffle(keys)
        versions = iter((first, second))
        return TRAJECTORY_SCHEMA.with_metadata(pa.KeyValueMetadata([
            (key, next(versions) if key == "streamrl.schema_version"
             else "trajectory" if key == "streamrl.schema" else "x") for key in keys]))

    good = with_versions("1", "2")
    check_compatible(good)
    for _ in range(100):  # a twin Arrow calls equal, where this Arrow has them
        bad = with_versions("2", "1")
        if bad.equals(good, check_metadata=True):
            break
    with pytest.raises(SchemaIncompatibleError) as info:
        check_compatible(bad)
    assert info.value.reason_code == "unknown_major_version"
