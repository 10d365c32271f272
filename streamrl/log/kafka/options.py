"""Extra Kafka client options, the durability guard, and SASL/TLS settings of the Kafka log.

Users reach the aiokafka clients in two ways, both checked here:

    kafka://broker:9093?security_protocol=SASL_SSL&sasl_mechanism=SCRAM-SHA-512&sasl_username=tr
    open_log(url, client_options={"metadata_max_age_ms": 60000})

A query key that names a `KafkaLogConfig` field sets it; any other key must be a parameter of an
aiokafka client and goes to `client_options`, then to every client that accepts it. Secrets never
travel in URLs (they end up in process arguments, shell history and logs): the SASL password comes
from `open_log(..., sasl_password=...)` or the environment variable named by `sasl_password_env`.

The guard: in durable mode (the default) an option that would break the log's guarantees is
refused with the reason, not silently overridden: a user who wrote `acks=1` believes it is in
effect. `durable=false` lets them through for throwaway benchmarks. The same holds for retention:
run topics are created to keep every record (`KEEP_FOREVER`); a finite `retention_ms` (or
retention in `topic_configs`), or an existing run topic that deletes records, is refused in
durable mode and warned about otherwise (`check_retention`), naming the setting. So is
replication: on a cluster of several brokers a run topic with replication factor 1 or
`min.insync.replicas` 1, to be created or existing, keeps an acknowledged write on one broker
only (`check_replication`).
"""

from __future__ import annotations

import difflib
import functools
import inspect
import logging
import ssl
from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.client import AIOKafkaClient

log = logging.getLogger(__name__)

CLIENTS: dict[str, type] = {
    "producer": AIOKafkaProducer,
    "consumer": AIOKafkaConsumer,
    "admin": AIOKafkaAdminClient,
    "client": AIOKafkaClient,
}

# Parameters accepted by each client kind (the constructor's own keyword names).
PARAMS: dict[str, frozenset[str]] = {
    kind: frozenset(inspect.signature(cls.__init__).parameters) - {"self", "loop", "topics"}
    for kind, cls in CLIENTS.items()
}
ALL_PARAMS = frozenset().union(*PARAMS.values())
# One settings dict serves the admin client and the raw client beside it: what both accept.
PARAMS["admin"] = PARAMS["admin"] & PARAMS.pop("client")

# Options the log sets itself and that a user value would silently break, whatever the mode.
RESERVED: dict[str, str] = {
    "bootstrap_servers": "comes from the URL's host:port list",
    "transactional_id": "is the writer_id option (one per logical writer)",
    "group_id": ("must stay unset (readers are assigned partitions by hand; positions "
                 "go through commit/transact)"),
    "key_serializer": "must stay unset (records are bytes)",
    "value_serializer": "must stay unset (records are bytes)",
    "key_deserializer": "must stay unset (records are bytes)",
    "value_deserializer": "must stay unset (records are bytes)",
    "ssl_context": ("is built from the ssl_cafile, ssl_certfile, ssl_keyfile options (files: "
                    "every process of a run can load them)"),
    "security_protocol": "is a log option: ?security_protocol=SASL_SSL",
    "sasl_mechanism": "is a log option: ?sasl_mechanism=SCRAM-SHA-512",
    "sasl_plain_username": "is the sasl_username log option",
    "sasl_plain_password": "is the sasl_password option or the environment (sasl_password_env)",
}

# option -> (is the value safe?, what it must be, why): refused in durable mode.
UNSAFE: dict[str, tuple[Any, str, str]] = {
    "acks": (lambda v: str(v).lower() in ("all", "-1"), "all",
             "with fewer acknowledgements a leader that fails before its followers copy a "
             "record loses a write already reported durable"),
    "enable_idempotence": (lambda v: v is True, "true",
                           "without it a retried batch can be written twice or out of order, and "
                           "transactions (exactly-once batches) need it"),
    "enable_auto_commit": (lambda v: v is False, "false",
                           "auto-commit moves a group's position behind the caller's back, "
                           "so a crash could skip records never processed"),
    "isolation_level": (lambda v: v == "read_committed", "read_committed",
                        "read_uncommitted readers see records of aborted transactions, e.g. a "
                        "batch a fenced trainer never committed"),
}

SECRET_QUERY_KEYS = {"sasl_password", "sasl_plain_password", "password"}


class UnsafeKafkaSetting(ValueError):
    """A Kafka client option that would break the log's durability or exactly-once guarantees."""


def parse_value(text: str) -> Any:
    """A URL query value as the client expects it: bool, int, float, or the string."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def check_client_options(options: Mapping[str, Any], *, durable: bool) -> None:
    """Refuse unknown, reserved and (in durable mode) unsafe client options, saying why."""
    for key, value in options.items():
        if key not in ALL_PARAMS:
            close = difflib.get_close_matches(key, sorted(ALL_PARAMS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown Kafka client option {key!r}{hint}: not a parameter of "
                             "any aiokafka client (AIOKafkaProducer, AIOKafkaConsumer, admin)")
        if key in RESERVED:
            raise ValueError(f"Kafka client option {key!r} cannot be set: it {RESERVED[key]}")
        rule = UNSAFE.get(key)
        if durable and rule is not None and not rule[0](value):
            raise UnsafeKafkaSetting(
                f"unsafe Kafka setting {key}={value!r} refused in durable mode: {rule[2]}. "
                f"The log needs {key}={rule[1]}; pass durable=false to accept the risk "
                "(e.g. ?durable=false for a throwaway benchmark)")


def for_client(options: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """The options one client kind accepts (a consumer option never reaches a producer)."""
    return {k: v for k, v in options.items() if k in PARAMS[kind]}


def ssl_context(cafile: str | None, certfile: str | None, keyfile: str | None,
                check_hostname: bool) -> ssl.SSLContext:
    """A client TLS context: the system CAs unless `cafile` names the cluster's CA; a client
    certificate when the brokers require mutual TLS. The broker's certificate is always verified
    against the CA; `check_hostname=False` only stops matching it against the host name."""
    try:
        ctx = ssl.create_default_context(cafile=cafile)
    except ssl.SSLError as exc:
        raise ValueError(f"ssl_cafile={cafile!r} holds no usable CA certificate (PEM): "
                         f"{exc}") from None
    if certfile is not None:
        def no_passphrase() -> str:  # else OpenSSL would prompt on the terminal, or hang
            raise ValueError(f"ssl_keyfile={keyfile or certfile!r} is encrypted: the log takes "
                             "an unencrypted private key (keep the file readable by the run "
                             "only, e.g. mode 0600)")
        try:
            ctx.load_cert_chain(certfile, keyfile, password=no_passphrase)
        except ssl.SSLError as exc:
            raise ValueError(f"ssl_certfile={certfile!r}, ssl_keyfile={keyfile!r}: not a PEM "
                             f"certificate and its private key: {exc}") from None
    ctx.check_hostname = check_hostname
    if not check_hostname:
        _warn_no_hostname_check()
    return ctx


@functools.cache
def _warn_no_hostname_check() -> None:
    log.warning("ssl_check_hostname=false: kafka brokers' certificates are checked against the "
                "CA but not against their host names; any holder of a certificate from that CA "
                "can pose as a broker")


# -- retention ------------------------------------------------------------------------------------
# Replay, audit and fork read a run from its first record, so a run's topics keep every record
# unless the user asks otherwise (`retention_ms`, or `topic_configs` in code): the broker's default
# (7 days in Kafka's and our scripts/kafka.sh config) would delete a long run's first days while
# it is still running.
KEEP_FOREVER: dict[str, str] = {"retention.ms": "-1", "retention.bytes": "-1",
                                "cleanup.policy": "delete"}
RETENTION_KEYS = tuple(KEEP_FOREVER)


class FiniteRetention(UnsafeKafkaSetting):
    """A run topic (existing, or about to be created) whose records Kafka would delete."""


def retention_problems(configs: Mapping[str, str]) -> list[str]:
    """The settings in a topic's configs that let Kafka delete its records, each named with its
    value and what it does; [] when the topic keeps everything."""
    problems = []
    if (ms := configs.get("retention.ms", "-1")) != "-1":
        problems.append(f"retention.ms={ms} (records older than {_duration(ms)} are deleted)")
    if (num_bytes := configs.get("retention.bytes", "-1")) != "-1":
        problems.append(f"retention.bytes={num_bytes} (the oldest segments are deleted past "
                        "that size per partition)")
    if "compact" in configs.get("cleanup.policy", "delete"):
        problems.append(f"cleanup.policy={configs['cleanup.policy']} (compaction keeps only the "
                        "newest record per key)")
    return problems


def describe_retention(configs: Mapping[str, str]) -> str:
    """A topic's retention in words, as `streamrl inspect` shows it."""
    problems = retention_problems(configs)
    return "forever" if not problems else "; ".join(p.partition(" (")[0] for p in problems)


def check_retention(what: str, configs: Mapping[str, str], *, durable: bool) -> None:
    """Refuse (durable mode) or warn about (otherwise) a topic whose records Kafka would delete.
    `what` names it: "stream 'run42.events'" or "streams this log creates"."""
    problems = retention_problems(configs)
    if not problems:
        return
    message = (f"{what} would lose history: {'; '.join(problems)}. Replay, audit and fork read "
               "a run from its first record; keep it with kafka-configs.sh --alter --entity-type "
               "topics --entity-name <topic> --add-config retention.ms=-1,retention.bytes=-1 "
               "(or `streamrl export` the run before it expires)")
    if durable:
        raise FiniteRetention(message + "; pass durable=false to accept the risk")
    log.warning("%s", message)


# -- replication ----------------------------------------------------------------------------------
# acks=all means "every in-sync replica has it", and min.insync.replicas is how few that may be.
# On one broker there is one copy whatever the settings; on a cluster, one copy (replication
# factor 1, or min.insync.replicas 1 once the followers fall behind) means a write acknowledged
# as durable is lost with the one broker that held it.


class UnreplicatedStream(UnsafeKafkaSetting):
    """A run topic on a cluster of several brokers that keeps (or acknowledges) one copy."""


def check_replication(what: str, num_brokers: int, replication_factor: int,
                      min_insync_replicas: int, *, durable: bool) -> None:
    """Refuse (durable mode) or warn about (otherwise) a stream on a cluster of `num_brokers`
    whose acknowledged writes may live on one broker only. `what` names it."""
    if num_brokers <= 1:
        return
    if replication_factor == 1:
        problem = (f"replication_factor=1 on a cluster of {num_brokers} brokers: each partition "
                   "has one copy, so losing its broker loses acknowledged records; leave "
                   "replication_factor unset (min(3, brokers)) or set it to 3")
    elif min_insync_replicas == 1:
        problem = (f"min.insync.replicas=1 with replication factor {replication_factor}: a "
                   "write is acknowledged once the leader alone holds it, and lost if that "
                   "leader fails before a follower copies it; leave min_insync_replicas unset "
                   "(min(2, replication factor)) or set it to 2 (for an existing topic: "
                   "kafka-configs.sh --alter --entity-type topics --entity-name <topic> "
                   "--add-config min.insync.replicas=2)")
    else:
        return
    message = f"{what}: {problem}"
    if durable:
        raise UnreplicatedStream(message + "; pass durable=false to accept the risk")
    log.warning("%s", message)


def _duration(ms: str) -> str:
    try:
        seconds = int(ms) / 1000
    except ValueError:
        return f"{ms} ms"
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size:
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} s"
