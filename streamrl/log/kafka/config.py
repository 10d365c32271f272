"""Configuration of the Kafka log and the aiokafka client settings derived from it.

aiokafka's defaults suit at-most-once telemetry, not an event log: acks=1 loses acknowledged
writes on leader failover, a 1 MiB request cap rejects trajectory batches, read_uncommitted
readers see aborted transactions, and auto-commit moves group positions behind the caller's back.
Every setting that matters is therefore spelled out here, next to the reason for it, and
`tests/log/test_kafka_config.py` checks that the clients really run with them.
"""

from __future__ import annotations

import os
from typing import Any, Literal
from urllib.parse import parse_qsl

import msgspec

import streamrl.log.kafka.options as opts

MiB = 1024 * 1024

# Topic-level `max.message.bytes` is checked against a whole record batch, which is the record
# plus ~60 bytes of batch framing (more with headers); this headroom keeps a record of exactly
# `max_record_bytes` accepted.
BATCH_FRAMING_HEADROOM = 1 * MiB


class KafkaLogConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Options of `open_log("kafka://host:port[,host:port]", **options)`."""

    bootstrap: str
    """Comma-separated host:port list, taken from the URL."""

    writer_id: str | None = None
    """Stable name of the logical writer (e.g. "run42.trainer"), used as the Kafka
    `transactional.id`. Required for `transact`. A restarted writer must reuse its id: starting it
    fences the previous incarnation (its open transaction is aborted and it can never commit
    again). Two live writers must never share one."""

    client_id: str = "streamrl"
    """Shows up in broker logs and quotas."""

    compression: Literal["gzip", "snappy", "lz4", "zstd"] | None = None
    """Off by default: trajectory payloads are Arrow IPC, mostly token ids and floats that
    compress poorly, and compressing 10+ MiB batches costs more CPU than the bytes it saves on a
    local network. Turn on for text-heavy streams or slow links."""

    linger_ms: int = 2
    """How long the producer waits to fill a batch. Small: producers already batch rows into
    Arrow record batches, so waiting longer only adds latency."""

    max_record_bytes: int = 64 * MiB
    """Largest record accepted (producer `max_request_size` and `max_batch_size`; topics are
    created with `max.message.bytes` a little above it; readers fetch at least this much). The
    broker's `message.max.bytes` must allow it too (scripts/kafka.sh sets 65 MiB)."""

    replication_factor: int | None = None
    """Copies of every partition of the streams this log creates. Unset (the default): min(3,
    brokers in the cluster), so 1 on a single dev broker and 3 on a production cluster. In
    durable mode 1 is refused on a cluster of several brokers (`options.check_replication`)."""

    min_insync_replicas: int | None = None
    """The `min.insync.replicas` of the streams this log creates: how many copies an acks=all
    write needs before it is acknowledged (fewer in sync: writes are refused, not acknowledged).
    Unset (the default): min(2, replication factor). In durable mode 1 is refused on a cluster of
    several brokers: a write held by one copy is lost with that broker."""

    retention_ms: int = -1
    """How long Kafka keeps the records of streams this log creates; -1 (the default) keeps them
    forever, as replay, audit and fork need (topics also get retention.bytes=-1 and
    cleanup.policy=delete). A finite value (e.g. ?retention_ms=604800000&durable=false) is refused
    in durable mode; so is an existing stream that deletes records (`options.check_retention`)."""

    topic_configs: dict[str, str] = msgspec.field(default_factory=dict)
    """Extra topic configs for streams this log creates (e.g. {"segment.bytes": "268435456"});
    they override the retention settings, under the same guard."""

    request_timeout_s: float = 30.0
    """Per-request timeout of the Kafka clients."""

    append_timeout_s: float = 60.0
    """How long `append_many` waits for acknowledgements before raising a retriable
    LogWriteError. The idempotent producer keeps retrying in the background, so a timed-out
    append may still land (as with any network write)."""

    commit_timeout_s: float = 30.0
    """How long `transact` waits for the transaction commit to be confirmed before it reports
    the outcome as unknown (TransactionOutcomeUnknownError, retriable)."""

    unavailable_s: float = 120.0
    """How long reads, end offsets and group-offset calls keep retrying while the brokers do not
    answer (a broker restarting takes tens of seconds) before raising a retriable LogError."""

    unknown_outcome_s: float = 300.0
    """How long `transact` keeps trying to learn whether an unconfirmed commit happened (while
    the broker is unreachable) before it gives up with TransactionOutcomeUnknownError."""

    transaction_timeout_s: float = 60.0
    """The broker aborts a transaction left open longer than this (e.g. by a crashed writer),
    which releases readers blocked behind it at the last stable offset."""

    fetch_max_wait_ms: int = 200
    """How long the broker holds a fetch when no data is there. Shorter than the 500 ms default
    because a reader that seeks elsewhere waits for its in-flight fetch to return first."""

    max_readers: int = 32
    """Partition readers (one consumer each) kept open; the least recently used is closed."""

    durable: bool = True
    """Refuse client options that break durability or exactly-once (acks other than all,
    idempotence off, auto-commit on, read_uncommitted; `options.UNSAFE`). Turn off only
    for throwaway benchmarks."""

    client_options: dict[str, Any] = msgspec.field(default_factory=dict)
    """Extra aiokafka client parameters (e.g. {"metadata_max_age_ms": 60000}), each given to
    every client that accepts it. URL query keys that are not log options land here. Checked by
    `options.check_client_options`."""

    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    """How clients talk to the brokers: SASL_SSL (authenticated, encrypted) in production."""

    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    """SASL mechanism for SASL_* protocols; SCRAM keeps the password off the wire."""

    sasl_username: str | None = None
    """The principal's name (Kafka ACLs name it as User:<name>)."""

    sasl_password: str | None = None
    """Only from code (`open_log(url, sasl_password=...)`), never from a URL; when unset the
    password is read from the environment variable `sasl_password_env`."""

    sasl_password_env: str = "STREAMRL_KAFKA_PASSWORD"
    """Environment variable that holds the SASL password (inherited by child processes, so a
    run's trainer and producers authenticate without the secret in their arguments)."""

    ssl_cafile: str | None = None
    """PEM file of the CA that signed the brokers' certificates (default: the system CAs)."""

    ssl_certfile: str | None = None
    """Client certificate chain (PEM), for brokers that require mutual TLS."""

    ssl_keyfile: str | None = None
    """Private key of `ssl_certfile` (PEM), if not in that file."""

    ssl_check_hostname: bool = True
    """Check that the broker's certificate names the host connected to."""

    def __post_init__(self) -> None:
        if not self.bootstrap:
            raise ValueError("kafka log needs at least one host:port, e.g. kafka://127.0.0.1:9092")
        if self.max_record_bytes < 1 * MiB:
            raise ValueError(
                f"max_record_bytes must be at least 1 MiB, got {self.max_record_bytes}"
            )
        self._check_replication_options()
        if self.retention_ms == 0 or self.retention_ms < -1:
            raise ValueError(f"retention_ms must be -1 (keep forever) or > 0, got "
                             f"{self.retention_ms}")
        if self.writer_id is not None and not self.writer_id:
            raise ValueError("writer_id must be a non-empty string (or left out)")
        opts.check_client_options(self.client_options, durable=self.durable)
        opts.check_retention("streams this log creates", self.new_topic_configs(),
                             durable=self.durable)
        self._check_security()

    def _check_replication_options(self) -> None:
        rf, min_isr = self.replication_factor, self.min_insync_replicas
        if rf is not None and rf < 1:
            raise ValueError(f"replication_factor must be >= 1 (or left unset), got {rf}")
        if min_isr is not None and min_isr < 1:
            raise ValueError(f"min_insync_replicas must be >= 1 (or left unset), got {min_isr}")
        if rf is not None and min_isr is not None and min_isr > rf:
            raise ValueError(f"min_insync_replicas={min_isr} > replication_factor={rf}: no "
                             "write could ever be acknowledged; lower min_insync_replicas")
        if "min.insync.replicas" in self.topic_configs:
            raise ValueError("topic_configs sets min.insync.replicas: use the log option "
                             "min_insync_replicas instead (?min_insync_replicas=2), which the "
                             "durability guard checks")

    def replication(self, num_brokers: int) -> tuple[int, int]:
        """(replication factor, min.insync.replicas) of a stream created on a cluster of
        `num_brokers`, after the durability guard (`options.check_replication`)."""
        rf = self.replication_factor or min(3, max(1, num_brokers))
        min_isr = self.min_insync_replicas or min(2, rf)
        opts.check_replication("streams this log creates", num_brokers, rf, min_isr,
                               durable=self.durable)
        return rf, min_isr

    def _check_security(self) -> None:
        sasl = self.security_protocol.startswith("SASL_")
        tls = self.security_protocol in ("SSL", "SASL_SSL")
        if sasl and (self.sasl_mechanism is None or not self.sasl_username):
            raise ValueError(f"security_protocol={self.security_protocol} needs sasl_mechanism "
                             "and sasl_username (e.g. ?sasl_mechanism=SCRAM-SHA-512"
                             "&sasl_username=trainer)")
        if sasl and self.password() is None:
            raise ValueError(f"SASL user {self.sasl_username!r} has no password: set the "
                             f"environment variable {self.sasl_password_env} (or pass "
                             "sasl_password= in code; never in the URL)")
        if not sasl and (self.sasl_mechanism or self.sasl_username):
            raise ValueError(f"sasl_mechanism/sasl_username need security_protocol SASL_SSL or "
                             f"SASL_PLAINTEXT, not {self.security_protocol}")
        files = (self.ssl_cafile, self.ssl_certfile, self.ssl_keyfile)
        if not tls and any(f is not None for f in files):
            raise ValueError(f"ssl_* files need security_protocol SSL or SASL_SSL, not "
                             f"{self.security_protocol}")
        for name, path in zip(("ssl_cafile", "ssl_certfile", "ssl_keyfile"), files, strict=True):
            if path is not None and not os.path.isfile(path):
                raise ValueError(f"{name}={path!r}: no such file")

    def password(self) -> str | None:
        return self.sasl_password or os.environ.get(self.sasl_password_env) or None

    def __repr__(self) -> str:  # never print the password
        shown = {f: getattr(self, f) for f in self.__struct_fields__ if f != "sasl_password"}
        return f"KafkaLogConfig({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    @classmethod
    def from_url(cls, url: str, **options: Any) -> KafkaLogConfig:
        scheme, sep, rest = url.partition("://")
        if scheme != "kafka" or not sep:
            raise ValueError(f"not a kafka URL: {url!r} (expected kafka://host:port[,host:port])")
        hosts, _, query = rest.partition("?")
        url_options: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)):
            if key in opts.SECRET_QUERY_KEYS:
                raise ValueError(f"{key} in a kafka URL refused: URLs end up in process "
                                 "arguments and logs; put the password in the environment "
                                 "(STREAMRL_KAFKA_PASSWORD, or the variable named by "
                                 "sasl_password_env)")
            if key in cls.__struct_fields__ and key != "client_options":
                url_options[key] = value
            else:
                extra[key] = opts.parse_value(value)
        merged = {**url_options, **options}
        merged["client_options"] = {**extra, **dict(options.get("client_options") or {})}
        try:
            # strict=False: query values are strings ("60", "false") for int/bool fields.
            return msgspec.convert({"bootstrap": hosts.strip("/"), **merged}, cls, strict=False)
        except msgspec.ValidationError as exc:
            if isinstance(exc.__context__, opts.UnsafeKafkaSetting):
                raise exc.__context__ from None  # keep its type: callers may catch it
            raise ValueError(f"bad kafka log option: {exc}") from None

    def new_topic_configs(self) -> dict[str, str]:
        """The topic configs of a stream this log creates."""
        return {"max.message.bytes": str(self.topic_max_message_bytes),
                **opts.KEEP_FOREVER, "retention.ms": str(self.retention_ms), **self.topic_configs}

    @property
    def topic_max_message_bytes(self) -> int:
        return self.max_record_bytes + BATCH_FRAMING_HEADROOM

    def producer_settings(self) -> dict[str, Any]:
        """Settings shared by the plain and the transactional producer."""
        return self._with_options("producer", {
            **self.common_settings(),
            # Durable means acknowledged by every in-sync replica: with acks=1 a leader that
            # dies before followers copy the record loses a write we already reported done.
            "acks": "all",
            # Broker-side de-duplication of retried batches (producer id + sequence numbers),
            # so a retry after a lost acknowledgement never writes a record twice, and retries
            # keep per-partition order.
            "enable_idempotence": True,
            # aiokafka's 1 MiB request cap would reject any real trajectory batch.
            "max_request_size": self.max_record_bytes,
            # A batch may grow to the record cap; a single record larger than the batch size
            # still gets a batch of its own (aiokafka always admits a batch's first record).
            "max_batch_size": self.max_record_bytes,
            "compression_type": self.compression,
            "linger_ms": self.linger_ms,
        })

    def transactional_settings(self, transactional_id: str) -> dict[str, Any]:
        return {
            **self.producer_settings(),
            "transactional_id": transactional_id,
            "transaction_timeout_ms": int(self.transaction_timeout_s * 1000),
        }

    def consumer_settings(self) -> dict[str, Any]:
        """Settings of every consumer: readers, and the one that answers end offsets."""
        return self._with_options("consumer", {
            **self.common_settings(),
            # No group membership: readers are assigned partitions by hand and positions are
            # committed explicitly through `commit`/`transact`, never behind the caller's back.
            "group_id": None,
            "enable_auto_commit": False,
            # Records of aborted or still-open transactions must never reach a reader; this also
            # makes end offsets the last stable offset rather than the high watermark.
            "isolation_level": "read_committed",
            # A position outside the log is a caller bug (or data lost to retention): raise,
            # rather than silently jump to the start ("earliest") or skip to the end ("latest").
            "auto_offset_reset": "none",
            # Fetch limits at least one maximal record; the broker returns an oversize first
            # batch anyway, but smaller caps would turn every large record into extra round trips.
            "fetch_max_bytes": self.topic_max_message_bytes,
            "max_partition_fetch_bytes": self.topic_max_message_bytes,
            "fetch_max_wait_ms": self.fetch_max_wait_ms,
        })

    def admin_settings(self) -> dict[str, Any]:
        """Settings of the admin client and the raw client that commits group offsets."""
        return self._with_options("admin", self.common_settings())

    def common_settings(self) -> dict[str, Any]:
        """Connection and security settings every client shares."""
        settings: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap,
            "client_id": self.client_id,
            "request_timeout_ms": int(self.request_timeout_s * 1000),
            "security_protocol": self.security_protocol,
        }
        if self.security_protocol in ("SSL", "SASL_SSL"):
            settings["ssl_context"] = opts.ssl_context(
                self.ssl_cafile, self.ssl_certfile, self.ssl_keyfile, self.ssl_check_hostname)
        if self.security_protocol.startswith("SASL_"):
            settings |= {"sasl_mechanism": self.sasl_mechanism,
                         "sasl_plain_username": self.sasl_username,
                         "sasl_plain_password": self.password()}
        return settings

    def _with_options(self, kind: str, settings: dict[str, Any]) -> dict[str, Any]:
        """`settings` plus the user's client options this kind of client accepts (checked at
        load: none can undo a safety setting in durable mode)."""
        return {**settings, **opts.for_client(self.client_options, kind)}
