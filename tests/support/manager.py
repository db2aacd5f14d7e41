"""Helpers for the manager tests: manager processes, free ports, /info probes, test certificates."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.support.net import free_port

ROOT = Path(__file__).resolve().parents[2]


def swarmha_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "swarmha.manager.cli", *args]


def run_cli(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        swarmha_cmd(*args), capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=_env(), check=False
    )


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SWARM_", "DOCKER_"))}
    env["PYTHONPATH"] = str(ROOT)
    return env


class ManagerProc:
    """One ``swarmha manage`` process on 127.0.0.1:port; its log goes to ``log``."""

    def __init__(
        self,
        url: str,
        log_dir: Path,
        *extra: str,
        port: int | None = None,
        replication: bool = True,
        prefix: tuple[str, ...] = (),
    ) -> None:
        """``prefix``: global flags before ``manage`` (``-l debug``)."""
        self.port = port or free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.log = log_dir / f"manager-{self.port}.log"
        args = [*prefix, "manage", "-H", self.addr]
        if replication:
            args += ["--replication", "--advertise", self.addr]
        args += ["--engine-refresh", "1s", *extra, url]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                swarmha_cmd(*args), stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=_env(), start_new_session=True
            )

    def url(self, path: str) -> str:
        return f"http://{self.addr}{path}"

    def get(self, path: str, timeout: float = 2.0) -> tuple[int, Any]:
        """(status, parsed JSON or text); (0, error) when the manager does not answer."""
        try:
            with urllib.request.urlopen(self.url(path), timeout=timeout) as r:
                body = r.read()
                status = r.status
        except urllib.error.HTTPError as e:
            body, status = e.read(), e.code
        except (OSError, urllib.error.URLError) as e:
            return 0, str(e)
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body.decode(errors="replace")

    def status(self) -> dict[str, str]:
        """The SystemStatus pairs of this manager's /info ({} when it does not answer)."""
        code, info = self.get("/info", timeout=1.0)
        if code != 200:
            return {}
        return {str(k).strip(): str(v) for k, v in info.get("SystemStatus") or []}

    def role(self) -> str:
        return self.status().get("Role", "")

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then SIGKILL the process group if it lingers; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        return self.proc.wait(10)


def make_certs(directory: Path) -> dict[str, Path]:
    """A CA, a server/client certificate for 127.0.0.1 signed by it, and a certificate from another CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(name(cn))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
            .sign(key, hashes.SHA256())
        )
        return key, cert

    def leaf(
        cn: str, issuer: tuple[ec.EllipticCurvePrivateKey, x509.Certificate]
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(issuer[1].subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
                ),
                critical=False,
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .sign(issuer[0], hashes.SHA256())
        )
        return key, cert

    the_ca = ca("swarmha test CA")
    other_ca = ca("some other CA")
    files: dict[str, Path] = {}
    for label, (key, cert) in {
        "ca": the_ca,
        "node": leaf("swarmha node", the_ca),
        "rogue": leaf("rogue", other_ca),
    }.items():
        files[f"{label}-cert"] = directory / f"{label}-cert.pem"
        files[f"{label}-key"] = directory / f"{label}-key.pem"
        files[f"{label}-cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        files[f"{label}-key"].write_bytes(key_pem(key))
    return files
