"""A compose replica's own name, by a reverse lookup sent to the container's DNS server.

Inside a container, `socket.gethostbyaddr(own address)` answers from /etc/hosts, which maps the
address to the container id; only Docker's embedded DNS server (the `nameserver` of
/etc/resolv.conf on a compose network) knows the replica's name (`streamrl_producer_2.
streamrl_default` under compose v1, `streamrl-producer-2.streamrl_default` under v2). So the PTR
query goes to that server directly: a standard DNS message over UDP (RFC 1035 §4)."""

from __future__ import annotations

import secrets
import socket
import struct
from pathlib import Path

PTR, IN = 12, 1


def nameserver(resolv_conf: Path = Path("/etc/resolv.conf")) -> str:
    for line in resolv_conf.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            return parts[1]
    raise LookupError(f"no nameserver in {resolv_conf}")


def ptr_query(address: str, qid: int) -> bytes:
    name = ".".join(reversed(address.split("."))) + ".in-addr.arpa"
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
    return struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + b"\0" + struct.pack(
        ">HH", PTR, IN)


def _name(message: bytes, offset: int) -> tuple[str, int]:
    """The domain name at `offset` (compression pointers followed) and the offset after it."""
    labels, end, hops = [], None, 0
    while True:
        length = message[offset]
        if length & 0xC0 == 0xC0:  # a pointer to an earlier name
            if end is None:
                end = offset + 2
            offset = struct.unpack_from(">H", message, offset)[0] & 0x3FFF
            hops += 1
            if hops > 32:
                raise ValueError("DNS name compression loop")
            continue
        if length == 0:
            return ".".join(labels), (end if end is not None else offset + 1)
        labels.append(message[offset + 1:offset + 1 + length].decode("ascii", "replace"))
        offset += 1 + length


def parse_ptr_answer(message: bytes, qid: int) -> str | None:
    """The first PTR record's name in a DNS response to query `qid`, or None."""
    rid, flags, qd, an = struct.unpack_from(">HHHH", message)
    if rid != qid or flags & 0x000F:  # not ours, or an error rcode (NXDOMAIN...)
        return None
    offset = 12
    for _ in range(qd):
        offset = _name(message, offset)[1] + 4
    for _ in range(an):
        offset = _name(message, offset)[1]
        rtype, _cls, _ttl, length = struct.unpack_from(">HHIH", message, offset)
        offset += 10
        if rtype == PTR:
            return _name(message, offset)[0]
        offset += length
    return None


def own_dns_name(timeout_s: float = 2.0) -> str:
    """This container's name as the DNS server knows it (see the module docstring)."""
    address = socket.gethostbyname(socket.gethostname())
    qid = secrets.randbelow(1 << 16)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout_s)
        sock.sendto(ptr_query(address, qid), (nameserver(), 53))
        answer = parse_ptr_answer(sock.recv(4096), qid)
    if answer is None:
        raise LookupError(f"the DNS server has no name for {address}")
    return answer
