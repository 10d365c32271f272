"""The segment layout is safetensors, and its reader treats every header as hostile input."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import msgspec
import pytest
import safetensors.torch
import torch

from streamrl.weights import TransportConfig, layout, open_transport


def raw_file(path: Path, header: object, data: bytes = b"", length: int | None = None) -> str:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(raw) if length is None else length
    path.write_bytes(struct.pack("<Q", n) + raw + data)
    return str(path)


def test_any_safetensors_reader_reads_a_published_version(tmp_path: Path) -> None:
    embed = torch.randn(4, 3)
    sd = {"embed": embed, "head": embed, "b": torch.randn(5).bfloat16(), "i": torch.arange(3)}
    layout.write(str(tmp_path / "v"), 0, sd, fsync=False)
    loaded = safetensors.torch.load_file(str(tmp_path / "v"))
    assert sorted(loaded) == ["b", "embed", "i"]  # the tied name lives in the metadata
    assert all(torch.equal(loaded[n], sd[n]) for n in loaded)


@pytest.mark.parametrize("zero_copy", [False, True])
def test_foreign_files_with_unaligned_tensors_are_read(tmp_path: Path, zero_copy: bool) -> None:
    f32 = torch.tensor([1.5, -2.0])
    header = {"u": {"dtype": "U8", "shape": [3], "data_offsets": [0, 3]},
              "f": {"dtype": "F32", "shape": [2], "data_offsets": [3, 11]}}
    path = raw_file(tmp_path / "x", header, b"\x01\x02\x03" + f32.numpy().tobytes())
    seg = layout.read(path, zero_copy=zero_copy)
    assert torch.equal(seg.tensors["f"], f32)
    assert seg.tensors["u"].tolist() == [1, 2, 3]
    assert seg.version == -1  # not written by streamrl: no version to vouch for


ENTRY = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
HOSTILE = {
    "not json": (b"{nope", {}),
    "header longer than the file": (json.dumps({"a": ENTRY}).encode(), {"length": 1 << 20}),
    "header length absurd": (b"{}", {"length": 1 << 40}),
    "offsets past the data": ({"a": {**ENTRY, "data_offsets": [0, 800]}}, {}),
    "offsets disagree with shape": ({"a": {**ENTRY, "shape": [3]}}, {}),
    "reversed offsets": ({"a": {**ENTRY, "data_offsets": [8, 0]}}, {}),
    "unknown dtype": ({"a": {**ENTRY, "dtype": "F128"}}, {}),
    "negative dim": ({"a": {**ENTRY, "shape": [-2, -1], "data_offsets": [0, 8]}}, {}),
    "unknown entry field": ({"a": {**ENTRY, "evil": 1}}, {}),
    "alias to nothing": ({"a": ENTRY, "__metadata__": {"streamrl.aliases": '{"b": "zz"}'}}, {}),
    "alias shadows a tensor": (
        {"a": ENTRY, "__metadata__": {"streamrl.aliases": '{"a": "a"}'}}, {}),
    "metadata not strings": ({"a": ENTRY, "__metadata__": {"streamrl.version": 3}}, {}),
    "version not a number": ({"a": ENTRY, "__metadata__": {"streamrl.version": "x"}}, {}),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_malformed_headers_are_refused_before_any_byte_is_viewed(tmp_path: Path,
                                                                 case: str) -> None:
    header, kw = HOSTILE[case]
    path = raw_file(tmp_path / "bad", header, b"\0" * 8, **kw)
    with pytest.raises(ValueError):
        layout.read(path, zero_copy=False)


def test_a_file_shorter_than_its_length_prefix_is_refused(tmp_path: Path) -> None:
    (tmp_path / "tiny").write_bytes(b"\x01\x02")
    with pytest.raises(ValueError, match="truncated"):
        layout.read(str(tmp_path / "tiny"), zero_copy=True)


def test_config_builds_transports_and_refuses_mistakes(tmp_path: Path) -> None:
    cfg = msgspec.json.decode(b'{"kind": "file", "directory": "%s", "keep_last": 3}'
                              % str(tmp_path).encode(), type=TransportConfig)
    with cfg.open() as t:
        assert (t.name, t.keep_last) == ("file", 3)
        assert t.publish(0, {"w": torch.ones(2)}).locator.startswith(f"file://{tmp_path}/")
    with TransportConfig(namespace="run-1").open() as t:
        assert t.name == "shm"
    with pytest.raises(msgspec.ValidationError, match="unknown weight transport 'ncl'"):
        msgspec.convert({"kind": "ncl"}, TransportConfig)
    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        msgspec.convert({"kind": "shm", "keep": 2}, TransportConfig)
    with pytest.raises(ValueError, match="keep_last"):
        TransportConfig(keep_last=0)


def test_reader_only_transports_refuse_to_publish_and_say_what_to_set(tmp_path: Path) -> None:
    for kind, option in (("file", "directory"), ("shm", "namespace")):
        with open_transport(kind) as reader, pytest.raises(ValueError, match=f"set {option}"):
            reader.publish(0, {"w": torch.ones(1)})
    with pytest.raises(ValueError, match="namespace"):
        open_transport("shm", namespace="../etc")
    with pytest.raises(ValueError, match="tmpfs"):
        open_transport("shm", namespace="r", directory=tmp_path / "missing")
