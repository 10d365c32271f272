"""A private Kafka broker for tests that kill, pause or reconfigure it (never the shared one on
127.0.0.1:9092, which other tests use at the same time): scripts/kafka.sh on free ports with
its own data dir."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.helpers import REPO

KAFKA_SH = REPO / "scripts" / "kafka.sh"


def kafka_sh(env: dict[str, str], *args: str, timeout_s: float) -> str:
    """`scripts/kafka.sh ARGS` with `env`; its stdout, or RuntimeError with the stderr tail."""
    out = subprocess.run([str(KAFKA_SH), *args], env=env, capture_output=True, text=True,
                         timeout=timeout_s)
    if out.returncode != 0:
        raise RuntimeError(f"kafka.sh {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return out.stdout


def free_port_pair() -> int:
    """A port p with p and p + 1 (the controller) free right now."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port < 65000 and _free(port + 1):
            return port
    raise RuntimeError("no two adjacent free ports")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class Broker:
    """`start()`, `kill()` (SIGKILL, no clean shutdown), `pause()`/`resume()` (SIGSTOP/SIGCONT),
    `stop()`. Restarting after a kill reuses the data dir, as an operator's restart would.

    `tls=True` puts TLS on the client port (scripts/kafka.sh's throwaway CA is `ca`); with
    `sasl_users` too the port speaks SASL_SSL. `tls_hosts` are the names in its certificate and
    `client_auth` says whether it asks for client certificates (none, requested, required)."""

    def __init__(self, data: Path, *, sasl_users: str = "", tls: bool = False,
                 tls_hosts: str = "localhost 127.0.0.1", client_auth: str = "none") -> None:
        self.data = data
        self.port = free_port_pair()
        self.env = {**os.environ, "STREAMRL_KAFKA_PORT": str(self.port),
                    "STREAMRL_KAFKA_DATA": str(data), "STREAMRL_KAFKA_HEAP": "512m",
                    "STREAMRL_KAFKA_SASL_USERS": sasl_users, "STREAMRL_KAFKA_STOP_TIMEOUT": "10",
                    "STREAMRL_KAFKA_START_TIMEOUT": "120", "STREAMRL_KAFKA_TLS": "1" if tls else "",
                    "STREAMRL_KAFKA_TLS_HOSTS": tls_hosts,
                    "STREAMRL_KAFKA_TLS_CLIENT_AUTH": client_auth}
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.url = f"kafka://{self.bootstrap}"

    @property
    def ca(self) -> Path:
        """The CA file TLS clients trust (`?ssl_cafile=`)."""
        return self.data / "tls" / "ca.pem"

    @property
    def client_auth(self) -> str:
        return self.env["STREAMRL_KAFKA_TLS_CLIENT_AUTH"]

    def restart(self, *, client_auth: str) -> None:
        """Stop and start again with another client-certificate setting (same data, same CA)."""
        self.stop()
        self.env["STREAMRL_KAFKA_TLS_CLIENT_AUTH"] = client_auth
        self.start()

    def client_cert(self, name: str) -> tuple[Path, Path]:
        """A client certificate (CN=name) and key signed by the broker's CA."""
        self.script("tls-client", name)
        clients = self.data / "tls" / "clients"
        return clients / f"{name}.pem", clients / f"{name}.key"

    def script(self, *args: str) -> str:
        return kafka_sh(self.env, *args, timeout_s=180)

    def start(self) -> None:
        self.script("start")

    @property
    def pid(self) -> int:
        return int((self.data / "broker.pid").read_text())

    def kill(self) -> None:
        pid = self.pid
        os.kill(pid, signal.SIGKILL)
        while Path(f"/proc/{pid}").exists() and "Z" not in _state(pid):
            time.sleep(0.05)

    def pause(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def stop(self) -> None:
        if (self.data / "broker.pid").exists():
            with contextlib.suppress(ProcessLookupError):
                self.resume()
        self.script("stop")


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return "Z"
