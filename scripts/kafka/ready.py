"""Exit 0 once a Kafka broker at HOST:PORT serves metadata with at least one live broker.

    python3 scripts/kafka/ready.py 127.0.0.1 9092 [timeout_s [min_brokers]]

Used by scripts/kafka.sh start. Standard library only (it runs before any project venv exists)
and fast (no JVM start per poll). An open port is not enough: the socket server listens before
the broker has registered with the controller, and a client that connects then gets an empty
cluster. So this sends a Metadata request (v4: in every Kafka from 1.0 through 4.x) for no topics
and waits until the answer lists a broker (`min_brokers` of them: a replicated cluster is ready
when every broker has registered).
"""

from __future__ import annotations

import socket
import struct
import sys
import time

METADATA_KEY, METADATA_VERSION = 3, 4


def live_brokers(host: str, port: int) -> int:
    client_id = b"streamrl-ready"
    # header v1: api key, version, correlation id, client id; body v4: no topics, no auto-create.
    body = struct.pack(">hhih", METADATA_KEY, METADATA_VERSION, 1, len(client_id)) + client_id
    body += struct.pack(">ib", 0, 0)
    with socket.create_connection((host, port), timeout=2.0) as sock:
        sock.sendall(struct.pack(">i", len(body)) + body)
        size = struct.unpack(">i", _recv(sock, 4))[0]
        resp = _recv(sock, size)
    # correlation id, throttle time, then the broker array's length.
    _corr, _throttle, num_brokers = struct.unpack_from(">iii", resp, 0)
    return num_brokers


def _recv(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        buf += chunk
    return buf


def main() -> int:
    host, port = sys.argv[1], int(sys.argv[2])
    deadline = time.monotonic() + (float(sys.argv[3]) if len(sys.argv) > 3 else 0.0)
    min_brokers = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    while True:
        try:
            if live_brokers(host, port) >= min_brokers:
                return 0
        except (OSError, struct.error):
            pass
        if time.monotonic() >= deadline:
            return 1
        time.sleep(0.25)


if __name__ == "__main__":
    sys.exit(main())
