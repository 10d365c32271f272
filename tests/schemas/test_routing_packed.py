"""Packed MoE routing: top-k sets stored as bit-packed combinatorial ranks round-trip for every
expert count, take >= 4x fewer bytes than SGLang's int32 for the big models, old plain records
still decode, and broken packed bytes are refused saying where (and dead-lettered)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from math import comb

import msgspec
import numpy as np
import pyarrow as pa
import pytest

from streamrl.dlq import DeadLetters
from streamrl.log.memory import MemoryLog
from streamrl.schemas import (
    DeadLetter,
    DecodeLimits,
    Sample,
    TrajectoryDecodeError,
    batch_to_samples,
    bitpack,
    decode_event,
    decode_trajectories,
    encode_trajectories,
    samples_to_batch,
)
from streamrl.schemas.routing_pack import packing, rank_entries, unrank_sets
from streamrl.schemas.testing import make_group, replace_column
from streamrl.streams import RunStreams


def topk_sets(rng: np.random.Generator, shape: tuple[int, int], num_experts: int,
              top_k: int) -> np.ndarray:
    """[T, L, k] distinct ids per (token, layer), in random (router-like, unsorted) order."""
    keys = rng.random((*shape, num_experts))
    return np.argsort(keys, axis=-1)[..., :top_k]


def routed(rng: np.random.Generator, num_experts: int, top_k: int, *, group: int = 2,
           tokens: int = 12, layers: int = 3, given: bool = True) -> list[Sample]:
    samples = make_group(rng, group, num_response_tokens=tokens)
    dtype = np.uint8 if num_experts <= 256 else np.uint16
    return [msgspec.structs.replace(
        s, routed_experts=topk_sets(rng, (tokens, layers), num_experts, top_k).astype(dtype),
        moe_num_experts=num_experts if given else None) for s in samples]


def roundtrip(samples: list[Sample]) -> list[Sample]:
    return batch_to_samples(decode_trajectories(encode_trajectories(samples_to_batch(samples))))


@pytest.mark.parametrize(("num_experts", "top_k"), [
    (1, 1), (2, 1), (2, 2), (8, 2), (64, 8), (128, 8), (256, 8), (257, 8), (384, 8),
    (512, 10), (1024, 1), (1024, 8), (10, 9), (40, 40), (300, 255), (4096, 8)])
def test_sets_roundtrip_sorted_for_every_expert_count(num_experts: int, top_k: int) -> None:
    rng = np.random.default_rng(num_experts * 1000 + top_k)
    samples = routed(rng, num_experts, top_k)
    # The extremes of the rank range: the lowest and the highest ids.
    samples[0].routed_experts[0, 0] = np.arange(top_k)
    samples[0].routed_experts[0, 1] = np.arange(num_experts - top_k, num_experts)[::-1]
    batch = samples_to_batch(samples)
    assert batch.column("routed_experts_packed").null_count == 0
    assert batch.column("routed_experts").null_count == batch.column(
        "routed_experts_wide").null_count == len(samples)
    for want, got in zip(samples, roundtrip(samples), strict=True):
        assert got.moe_num_experts == num_experts
        assert got.routed_experts.dtype == (np.uint8 if num_experts <= 256 else np.uint16)
        # The set survives; the order within a top-k is not stored: ids come back ascending.
        np.testing.assert_array_equal(got.routed_experts, np.sort(want.routed_experts, axis=-1))


@pytest.mark.parametrize("num_experts", range(1, 10))
def test_ranks_are_a_bijection_onto_0_to_c_e_k(num_experts: int) -> None:
    for top_k in range(1, num_experts + 1):
        p = packing(num_experts, top_k)
        sets = np.array(list(itertools.combinations(range(num_experts), top_k)))
        ranks, repeats = rank_entries(sets[:, ::-1].copy(), p)  # any order in, the same rank
        assert not repeats.any()
        assert sorted(ranks[:, 0].tolist()) == list(range(comb(num_experts, top_k)))
        np.testing.assert_array_equal(unrank_sets(ranks, p), sets)


def test_without_moe_num_experts_the_batch_records_the_smallest_count_that_decodes() -> None:
    samples = routed(np.random.default_rng(3), 384, 8, given=False)
    top = max(int(s.routed_experts.max()) for s in samples) + 1
    back = roundtrip(samples)
    assert [s.moe_num_experts for s in back] == [top] * len(samples)
    for want, got in zip(samples, back, strict=True):
        np.testing.assert_array_equal(got.routed_experts, np.sort(want.routed_experts, -1))


# (name, num_hidden_layers (what SGLang sends rows for), num_moe_layers, experts, top-k)
MODELS = [("Qwen3-30B-A3B", 48, 48, 128, 8), ("DeepSeek-V3", 61, 58, 256, 8),
          ("Kimi-K2", 61, 60, 384, 8), ("Qwen3-Next-80B-A3B", 48, 48, 512, 10)]


@pytest.mark.parametrize(("name", "hidden", "moe_layers", "num_experts", "top_k"), MODELS)
def test_stored_bytes_per_token_are_4x_below_sglang_int32(
        name: str, hidden: int, moe_layers: int, num_experts: int, top_k: int) -> None:
    tokens, rng = 256, np.random.default_rng(5)
    samples = routed(rng, num_experts, top_k, group=4, tokens=tokens, layers=moe_layers)
    bare = [msgspec.structs.replace(s, routed_experts=None, moe_num_experts=None)
            for s in samples]
    with_routing, without = (len(encode_trajectories(samples_to_batch(g)))
                             for g in (samples, bare))
    per_token = (with_routing - without) / (len(samples) * tokens)
    bits = packing(num_experts, top_k).bits_per_entry
    assert per_token == pytest.approx(moe_layers * bits / 8, rel=0.01)  # Arrow overhead < 1%
    # Against SGLang's int32 of the MoE layers alone, and of every hidden layer (what it sends).
    assert 4 * moe_layers * top_k / per_token >= 4.0, name
    assert 4 * hidden * top_k / per_token >= 4.0, name


def test_old_plain_records_still_decode_in_their_recorded_order() -> None:
    """A record from before the packed column: uint8 / uint16 ids, no moe_num_experts."""
    rng = np.random.default_rng(7)
    narrow, wide = routed(rng, 128, 4), routed(rng, 384, 4)
    old_samples = [msgspec.structs.replace(s, moe_num_experts=None) for s in narrow + wide]
    columns = {
        "moe_num_layers": pa.array([3] * 4, pa.uint16()), "moe_top_k": pa.array([4] * 4,
                                                                               pa.uint8()),
        "routed_experts": pa.array([s.routed_experts.reshape(-1) for s in narrow] + [None] * 2,
                                   pa.list_(pa.uint8())),
        "routed_experts_wide": pa.array([None] * 2 + [s.routed_experts.reshape(-1)
                                                      for s in wide], pa.list_(pa.uint16()))}
    batch = samples_to_batch([msgspec.structs.replace(s, routed_experts=None)
                              for s in old_samples])
    for name, values in columns.items():
        batch = replace_column(batch, name, values)
    old = batch.drop_columns(["moe_num_experts", "routed_experts_packed"])
    back = batch_to_samples(decode_trajectories(encode_trajectories(old)))
    for want, got in zip(old_samples, back, strict=True):
        assert got.moe_num_experts is None
        assert got.routed_experts.dtype == want.routed_experts.dtype
        np.testing.assert_array_equal(got.routed_experts, want.routed_experts)  # order kept


Edit = Callable[[np.ndarray], np.ndarray]


def packed_batch() -> pa.RecordBatch:
    return samples_to_batch(routed(np.random.default_rng(9), 384, 8, group=3, tokens=5))


def with_row_bytes(batch: pa.RecordBatch, row: int, edit: Edit) -> pa.RecordBatch:
    rows = [np.array(r, np.uint8) for r in batch.column("routed_experts_packed").to_pylist()]
    rows[row] = edit(rows[row])
    return replace_column(batch, "routed_experts_packed", pa.array(rows, pa.list_(pa.uint8())))


def all_ones_in_entry(entry: int) -> Edit:
    def edit(data: np.ndarray) -> np.ndarray:
        bits = np.unpackbits(data, bitorder="little")
        bits[entry * 54:(entry + 1) * 54] = 1  # 2**54 - 1 >= C(384, 8): no set has that rank
        return np.packbits(bits, bitorder="little")
    return edit


@pytest.mark.parametrize(("broken", "code", "where"), [
    (lambda b: with_row_bytes(b, 1, lambda d: d[:-1]), "routing_shape_mismatch",
     "row 1, column 'routed_experts_packed'"),
    (lambda b: with_row_bytes(b, 2, all_ones_in_entry(7)), "routing_out_of_range",
     "row 2, column 'routed_experts_packed', token 2, layer 1"),
    (lambda b: replace_column(b, "moe_num_experts", pa.array([384, None, 384], pa.uint16())),
     "missing_moe_shape", "row 1, column 'moe_num_experts'"),
    (lambda b: replace_column(b, "moe_num_experts", pa.array([384, 384, 7], pa.uint16())),
     "bad_moe_shape", "row 2, column 'moe_num_experts'"),
    (lambda b: replace_column(b, "moe_top_k", pa.array([8, None, 8], pa.uint8())),
     "missing_moe_shape", "row 1, column 'moe_num_layers'"),
    (lambda b: replace_column(b, "routed_experts_wide", pa.array(
        [None, None, list(range(120))], pa.list_(pa.uint16()))),
     "both_routing_columns", "row 2, column 'routed_experts_packed'"),
])
def test_broken_packed_routing_is_refused_naming_row_and_column(
        broken: Callable[[pa.RecordBatch], pa.RecordBatch], code: str, where: str) -> None:
    batch = broken(packed_batch())
    with pytest.raises(TrajectoryDecodeError) as err:
        encode_trajectories(batch)  # the producer's gate
    assert (err.value.reason_code, err.value.where) == (code, where)
    with pytest.raises(TrajectoryDecodeError) as err:  # and the reader's, for bytes that skip it
        decode_trajectories(encode_trajectories(batch, validate=False))
    assert (err.value.reason_code, err.value.where) == (code, where)


async def test_an_undecodable_packed_record_is_dead_lettered() -> None:
    log, streams = MemoryLog(), RunStreams("packed")
    for stream in (streams.trajectories, streams.dlq):
        await log.ensure_stream(stream)
    bad = encode_trajectories(with_row_bytes(packed_batch(), 0, all_ones_in_entry(0)),
                              validate=False)
    await log.append(streams.trajectories, bad)
    await log.append(streams.trajectories, encode_trajectories(packed_batch()))
    dlq = DeadLetters(log, "packed", component="trainer")
    decoded = [await dlq.decode_or_reject(r, decode_trajectories)
               for r in await log.read_all(streams.trajectories)]
    assert decoded[0] is None and decoded[1].num_rows == 3
    [record] = await log.read_all(streams.dlq)
    letter = decode_event(record.value, "dlq")
    assert isinstance(letter, DeadLetter) and letter.reason_code == "routing_out_of_range"
    assert letter.original == bad


@pytest.mark.parametrize(("ids", "num_experts", "message"), [
    (np.array([[[0, 384]]]), 384, r"\[0, moe_num_experts = 384\), got \[0, 384\]"),
    (np.array([[[-1, 3]]]), None, r"got \[-1, 3\]"),
    (np.array([[0, 1]]), 8, "3-D"),
    (np.array([[[0, 1, 2]]]), 2, "moe_num_experts 2 must be >= top_k 3"),
    (np.array([[[0, 1]]]), 70_000, "<= 65535"),
    (np.array([[[0.0, 1.0]]]), 8, "integers"),
])
def test_writer_refuses_ids_that_cannot_be_stored(ids: np.ndarray, num_experts: int | None,
                                                  message: str) -> None:
    [sample] = make_group(np.random.default_rng(1), 1, num_response_tokens=len(ids))
    sample = msgspec.structs.replace(sample, routed_experts=ids, moe_num_experts=num_experts)
    with pytest.raises(ValueError, match=message):
        samples_to_batch([sample])


@pytest.mark.parametrize("widths", [(1,), (7,), (54,), (64,), (36, 36), (64, 1, 63), (0, 5)])
def test_bit_fields_roundtrip_for_rows_of_any_length(widths: tuple[int, ...]) -> None:
    rng = np.random.default_rng(len(widths) * 100 + sum(widths))
    entries = np.array([0, 1, 7, 8, 9, 0, 23, 64], np.int64)
    raw = rng.integers(0, 1 << 64, (int(entries.sum()), len(widths)), dtype=np.uint64)
    values = raw & np.array([(1 << w) - 1 for w in widths], np.uint64)  # each < 2**width
    data, offsets = bitpack.pack_rows(values, widths, entries)
    assert (np.diff(offsets) == (entries * sum(widths) + 7) // 8).all()
    # Every row starts on its own byte: reading the rows in another order still works.
    order = np.arange(len(entries))[::-1]
    firsts = np.cumsum(entries) - entries
    back = bitpack.unpack_rows(data, offsets[:-1][order], entries[order], widths)
    want = np.concatenate([values[firsts[r]:firsts[r] + entries[r]] for r in order])
    np.testing.assert_array_equal(back, want)


def one_row(tokens: int, layers: int, num_experts: int, top_k: int) -> list[Sample]:
    return routed(np.random.default_rng(11), num_experts, top_k, group=1, tokens=tokens,
                  layers=layers)


def test_a_row_longer_than_a_decode_piece_roundtrips_and_a_bad_rank_is_found_past_it() -> None:
    samples = one_row(40_000, 30, 4, 2)  # 1.2 M entries: unpacked in two pieces of <= 2**20
    [back] = roundtrip(samples)
    np.testing.assert_array_equal(back.routed_experts, np.sort(samples[0].routed_experts, -1))
    entry = (1 << 20) + 5  # in the second piece; 3 bits each, ranks 6 and 7 are no 2-set of 4

    def corrupt(data: np.ndarray) -> np.ndarray:
        bits = np.unpackbits(data, bitorder="little")
        bits[entry * 3:(entry + 1) * 3] = 1
        return np.packbits(bits, bitorder="little")

    batch = with_row_bytes(samples_to_batch(samples), 0, corrupt)
    with pytest.raises(TrajectoryDecodeError) as err:
        decode_trajectories(encode_trajectories(batch, validate=False))
    assert err.value.reason_code == "routing_out_of_range"
    assert err.value.where == (f"row 0, column 'routed_experts_packed', token {entry // 30}, "
                               f"layer {entry % 30}")


def test_a_batch_may_not_ask_for_tables_of_many_expert_counts() -> None:
    rng = np.random.default_rng(12)
    samples = [msgspec.structs.replace(s, moe_num_experts=16 + i) for i, s in enumerate(
        make_group(rng, 17, num_response_tokens=2))]
    samples = [msgspec.structs.replace(s, routed_experts=np.array(
        [[[0, 1]], [[2, 3]]], np.uint8)) for s in samples]
    data = encode_trajectories(samples_to_batch(samples), validate=False)
    with pytest.raises(TrajectoryDecodeError) as err:
        decode_trajectories(data)
    assert err.value.reason_code == "too_many_moe_shapes"
    decode_trajectories(encode_trajectories(samples_to_batch(samples[:16])))  # 16 are fine


def test_packed_ids_are_capped_by_the_message_limit() -> None:
    """1-bit entries (2 experts, top-1) expand 8x when decoded: the reader caps the ids."""
    data = encode_trajectories(samples_to_batch(one_row(10_000, 100, 2, 1)), validate=False)
    limits = DecodeLimits(max_message_bytes=500_000)
    assert len(data) < limits.max_message_bytes
    with pytest.raises(TrajectoryDecodeError) as err:
        decode_trajectories(data, limits=limits)
    assert (err.value.reason_code, err.value.where) == (
        "too_large", "row 0, column 'routed_experts_packed'")


def test_the_trainer_forward_and_router_gradients_do_not_depend_on_order_within_a_top_k() -> None:
    """Why storing sets is enough: forcing a top-k in any order gives the same logits and router
    gradients up to float summation order (the router softmax runs in fp32 by design)."""
    import torch

    from streamrl.models import CausalLM, ModelConfig
    from streamrl.models.moe import MoE

    config = ModelConfig(model_type="qwen3_moe", vocab_size=64, hidden_size=32,
                         intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=8, num_experts=16,
                         num_experts_per_tok=4, moe_intermediate_size=16, norm_topk_prob=True)
    torch.manual_seed(0)
    model = CausalLM(config).double()
    tokens = torch.randint(0, 64, (2, 24))
    positions = torch.arange(24).expand(2, -1)
    with torch.no_grad():
        free = model(tokens, positions).routed_experts  # [B, T, L, k], the router's order
    shuffled = free.gather(-1, torch.argsort(torch.rand(free.shape), -1))
    results = []
    for forced in (free, shuffled, free.sort(-1).values):
        model.zero_grad()
        out = model(tokens, positions, forced_routing=forced)
        out.logits.log_softmax(-1).sum().backward()
        grads = [m.gate.weight.grad.clone() for m in model.modules() if isinstance(m, MoE)]
        results.append((out.logits.detach(), grads))
    assert not torch.equal(shuffled, free)
    for logits, grads in results[1:]:
        torch.testing.assert_close(logits, results[0][0], rtol=1e-6, atol=1e-6)
        for got, want in zip(grads, results[0][1], strict=True):
            assert float(want.abs().sum()) > 0
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
