"""Diagnosing TLS trouble with a Kafka broker: `tls_problem` names why a handshake fails
(untrusted CA, wrong host name, expired or refused certificate, no TLS on that port), which
`KafkaLog.start` raises as `KafkaTLSError` instead of aiokafka's "unable to bootstrap".
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct

from streamrl.log.base import LogError
from streamrl.log.kafka.config import KafkaLogConfig
from streamrl.log.kafka.options import ssl_context


class KafkaTLSError(LogError):
    """The TLS handshake with a broker failed: an untrusted or mismatched certificate, a client
    certificate the broker refused, or no TLS on that port. Asking again cannot help."""

    retriable = False


# X509_V_ERR_* codes (OpenSSL's x509_vfy.h) that mean "not the name I connected to".
_NAME_MISMATCH = {62, 64}  # HOSTNAME_MISMATCH, IP_ADDRESS_MISMATCH
_CERT_EXPIRED = {9, 10}  # CERT_NOT_YET_VALID, CERT_HAS_EXPIRED
# TLS alerts a broker sends when it refuses the client's certificate (or its absence).
_CLIENT_CERT_REFUSED = ("CERTIFICATE_REQUIRED", "BAD_CERTIFICATE", "UNKNOWN_CA",
                        "CERTIFICATE_UNKNOWN", "HANDSHAKE_FAILURE", "ACCESS_DENIED")


async def tls_problem(config: KafkaLogConfig) -> KafkaTLSError | None:
    """Why TLS with the first bootstrap broker fails, if it does. aiokafka logs the handshake
    error and raises "unable to bootstrap" (and a refused client certificate reaches it only as
    "connection closed"), so one handshake of our own, plus one request to draw the broker's
    alert, recovers the reason in bounded time."""
    if config.security_protocol not in ("SSL", "SASL_SSL"):
        return None
    host, _, port = config.bootstrap.split(",")[0].rpartition(":")
    ctx = ssl_context(config.ssl_cafile, config.ssl_certfile, config.ssl_keyfile,
                      config.ssl_check_hostname)
    timeout_s = min(config.request_timeout_s, 10.0)
    reason = await asyncio.to_thread(_handshake, host, int(port), ctx, timeout_s,
                                     config.ssl_cafile)
    if reason is None:
        return None
    return KafkaTLSError(f"TLS with kafka at {host}:{port} failed: {reason}")


def _handshake(host: str, port: int, ctx: ssl.SSLContext, timeout_s: float,
               cafile: str | None) -> str | None:
    """A TLS handshake and an ApiVersions request (v0: allowed before any SASL login); the
    reason in words if TLS fails, None if it works or the broker is just unreachable."""
    request = struct.pack(">hhih", 18, 0, 1, 8) + b"streamrl"
    stage = "connect"
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as raw:
            stage = "handshake"
            with ctx.wrap_socket(raw, server_hostname=host) as tls:
                stage = "request"
                tls.sendall(struct.pack(">i", len(request)) + request)
                if not tls.recv(4):
                    raise ConnectionResetError("closed")
    except ssl.SSLCertVerificationError as exc:
        return _explain_verify(exc, host, cafile)
    except ssl.SSLError as exc:
        what = f"{exc.reason or exc}".upper()
        if any(alert in what for alert in _CLIENT_CERT_REFUSED):
            return (f"the broker refused this client's certificate, or its lack of one "
                    f"({exc.reason}): a broker with ssl.client.auth=required needs ssl_certfile "
                    "and ssl_keyfile, a certificate signed by a CA it trusts")
        return f"{exc} (does the broker speak TLS on this port, i.e. an SSL or SASL_SSL listener?)"
    except ConnectionResetError:
        if stage == "handshake":
            return ("the broker closed the connection during the TLS handshake (no TLS on this "
                    "port?)")
        return None
    except OSError:
        return None
    return None


def _explain_verify(exc: ssl.SSLCertVerificationError, host: str, cafile: str | None) -> str:
    what = f"the broker's certificate was rejected ({exc.verify_message})"
    if exc.verify_code in _NAME_MISMATCH:
        return (f"{what}: it does not name {host!r}. Connect with a name the certificate holds "
                "(its subjectAltName), or, knowingly, ssl_check_hostname=false "
                "(docs/kafka-security.md says what that gives up)")
    if exc.verify_code in _CERT_EXPIRED:
        return f"{what}: outside its validity period (is the clock right?)"
    trusted = f"ssl_cafile={cafile!r}" if cafile else "the system CAs (no ssl_cafile given)"
    return (f"{what}: it is not signed by a CA this client trusts, {trusted}; ssl_cafile must "
            "be the CA that signed the brokers' certificates")
