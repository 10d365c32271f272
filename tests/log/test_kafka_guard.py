"""The Kafka config guard: in durable mode, client options that break durability or exactly-once
are refused with the setting and the reason; SASL and TLS options reach every aiokafka client;
secrets never come from URLs. Pure config: no broker needed."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import pytest

from streamrl.log import open_log
from streamrl.log.kafka import options
from streamrl.log.kafka.config import KafkaLogConfig
from streamrl.log.kafka.options import UnsafeKafkaSetting

URL = "kafka://127.0.0.1:9092"


@pytest.mark.parametrize(("query", "setting"), [
    ("acks=1", "acks=1"),
    ("acks=0", "acks=0"),
    ("enable_idempotence=false", "enable_idempotence=False"),
    ("enable_auto_commit=true", "enable_auto_commit=True"),
    ("isolation_level=read_uncommitted", "isolation_level='read_uncommitted'"),
])
def test_unsafe_settings_are_refused_in_durable_mode(query: str, setting: str) -> None:
    with pytest.raises(UnsafeKafkaSetting) as info:
        open_log(f"{URL}?{query}")
    message = str(info.value)
    assert setting in message and "durable mode" in message and "durable=false" in message
    # the same option given in code is refused the same way
    key, value = query.split("=")
    with pytest.raises(UnsafeKafkaSetting):
        open_log(URL, client_options={key: value == "true" if value in ("true", "false")
                                      else value})


def test_durable_false_lets_an_unsafe_setting_through_to_the_client() -> None:
    config = KafkaLogConfig.from_url(f"{URL}?acks=1&durable=false")
    assert config.durable is False and config.producer_settings()["acks"] == 1


def test_safe_and_extra_client_options_reach_only_the_clients_that_take_them() -> None:
    config = KafkaLogConfig.from_url(f"{URL}?acks=all&metadata_max_age_ms=60000"
                                     "&fetch_min_bytes=10&linger_ms=7")
    assert config.linger_ms == 7  # a log option in the query sets the log option
    producer, consumer = config.producer_settings(), config.consumer_settings()
    assert producer["acks"] == "all" and producer["metadata_max_age_ms"] == 60000
    assert consumer["fetch_min_bytes"] == 10 and "fetch_min_bytes" not in producer
    assert consumer["isolation_level"] == "read_committed"


@pytest.mark.parametrize(("query", "message"), [
    ("akcs=all", "did you mean 'acks'"),
    ("group_id=mine", "group_id"),
    ("transactional_id=x", "writer_id"),
    ("sasl_password=hunter2", "environment"),
    ("security_protocol=SASL_SSL", "needs sasl_mechanism and sasl_username"),
    ("sasl_mechanism=SCRAM-SHA-512&sasl_username=u", "need security_protocol SASL_SSL"),
    ("security_protocol=SSL&ssl_cafile=/nonexistent/ca.pem", "no such file"),
])
def test_bad_options_say_what_is_wrong(query: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        open_log(f"{URL}?{query}")


def test_sasl_settings_reach_every_client_and_the_password_comes_from_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"{URL}?security_protocol=SASL_PLAINTEXT&sasl_mechanism=SCRAM-SHA-512&sasl_username=tr"
    monkeypatch.delenv("STREAMRL_KAFKA_PASSWORD", raising=False)
    with pytest.raises(ValueError, match="STREAMRL_KAFKA_PASSWORD"):
        open_log(url)
    monkeypatch.setenv("STREAMRL_KAFKA_PASSWORD", "s3cret")
    config = KafkaLogConfig.from_url(url)
    for settings in (config.producer_settings(), config.consumer_settings(),
                     config.admin_settings(), config.transactional_settings("w")):
        assert settings["security_protocol"] == "SASL_PLAINTEXT"
        assert settings["sasl_mechanism"] == "SCRAM-SHA-512"
        assert settings["sasl_plain_username"] == "tr"
        assert settings["sasl_plain_password"] == "s3cret"
    assert "s3cret" not in repr(config)


def test_tls_files_build_the_context_every_client_gets(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # ssl_check_hostname=false warns once per process: leave that once to the test that checks
    # the warning (tests/faults/test_kafka_tls.py) when both run in one session.
    monkeypatch.setattr(options, "_warn_no_hostname_check", lambda: None)
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    made = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days",
                           "1", "-subj", "/CN=localhost", "-keyout", str(key), "-out",
                           str(cert)], capture_output=True)
    if made.returncode != 0:
        pytest.skip("openssl could not make a test certificate")
    config = KafkaLogConfig.from_url(
        f"{URL}?security_protocol=SSL&ssl_cafile={cert}&ssl_certfile={cert}&ssl_keyfile={key}"
        "&ssl_check_hostname=false")
    contexts = [s["ssl_context"] for s in (config.producer_settings(),
                                           config.consumer_settings(), config.admin_settings())]
    for ctx in contexts:
        assert isinstance(ctx, ssl.SSLContext)
        assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname is False
        assert any(c["subject"] == ((("commonName", "localhost"),),)
                   for c in ctx.get_ca_certs())
