"""What the TLS tests share: the log round trip a run depends on, and certificates from a CA
the broker does not know (made with openssl, like any stranger's)."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from streamrl.log import Append, StreamPartition, open_log
from streamrl.log.kafka import KafkaLog

# A refused handshake must fail in seconds, not after aiokafka's retries or a request timeout.
FAIL_FAST_S = 15.0


def need_tools() -> None:
    for tool in ("java", "keytool", "openssl"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not found: the TLS broker and its certificates need Java 17+ "
                        "(keytool) and openssl")


async def round_trip(url: str, **options: object) -> None:
    """append, read, transact (an output record and the group's position, atomically), commit
    and committed: every kind of request the trainer and producers send, over this connection."""
    run = f"tls-{uuid.uuid4().hex[:8]}"
    source, out = f"{run}.trajectories", f"{run}.events"
    async with open_log(url, writer_id=f"{run}-trainer", **options) as log:
        assert isinstance(log, KafkaLog)
        for stream in (source, out):
            await log.ensure_stream(stream, 1)
        await log.append_many([Append(stream=source, value=v) for v in (b"t0", b"t1", b"t2")])
        records = await log.read(source, 0, 0, timeout_s=10)
        assert [r.value for r in records] == [b"t0", b"t1", b"t2"]
        await log.transact("trainer", {StreamPartition(source, 0): 3},
                           [Append(stream=out, value=b"step 1")])
        assert await log.committed("trainer", source, 0) == 3
        # commit markers land a moment after the commit returns; then readers see the record
        assert [r.value for r in await log.read(out, 0, 0, timeout_s=10)] == [b"step 1"]
        await log.commit("audit", {StreamPartition(source, 0): 1})
        assert await log.committed("audit", source, 0) == 1


async def start_fails(url: str, error: type[Exception], **options: object) -> str:
    """Opening the log fails with `error` within FAIL_FAST_S; returns the message."""
    t0 = time.monotonic()
    log = open_log(url, request_timeout_s=10, **options)
    with pytest.raises(error) as info:
        await log.start()
    await log.stop()
    elapsed = time.monotonic() - t0
    assert elapsed < FAIL_FAST_S, f"took {elapsed:.1f}s to fail: {info.value}"
    return str(info.value)


def self_signed(directory: Path, name: str, passphrase: str = "") -> tuple[Path, Path]:
    """A self-signed certificate and key (CN=name): a rogue CA, or a client certificate no CA
    the broker trusts has signed; the key encrypted with `passphrase` if one is given."""
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    protect = ["-passout", f"pass:{passphrase}"] if passphrase else ["-nodes"]
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", *protect, "-days", "2", "-subj", f"/CN={name}",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=30)
    return cert, key
