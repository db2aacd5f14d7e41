"""Real Docker engines on loopback, for the manager tests and benchmarks (no pytest here; the fixture is in
tests/support/docker_engines.py).

Each engine is ``dockerd --host tcp://127.0.0.1:PORT`` with its own data root, exec root (short path: the
managed containerd's unix socket lives there) and pid file, ``--iptables=false --bridge=none
--storage-driver=vfs``; each starts its own managed containerd. Every engine gets the test image
:data:`IMAGE`, made without a registry: a tar of Debian's static busybox with /bin/sh, /bin/echo, ... linked
to it, loaded with ``docker import``.

:func:`missing` names what is missing (dockerd, containerd, docker, busybox, unshare, docker-registry, root) or
returns None. :func:`start_registry` starts a registry on loopback for the engines to pull from and push to.
:func:`stop_engine` kills each engine's whole process group (dockerd and its containerd) and removes its directories.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import ssl
import subprocess
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path

import attrs

from tests.support.net import free_port
from tests.support.procs import terminate

IMAGE = "swarmha-test:busybox"
_APPLETS = ("sh", "echo", "cat", "sleep", "true", "false", "ls", "env", "head", "seq", "printf")


@attrs.define
class DockerEngine:
    addr: str
    root: Path
    proc: subprocess.Popen[bytes]
    #: With ``--tlsverify``: the files of :func:`tests.support.manager.make_certs` it was started with.
    tls: dict[str, Path] | None = None

    @property
    def host(self) -> str:
        return f"tcp://{self.addr}"

    def docker(self, *args: str, timeout: float = 60.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        return docker_cli(self.host, *tls_flags(self.tls), *args, timeout=timeout, check=check)


def tls_flags(certs: dict[str, Path] | None) -> list[str]:
    """Docker's ``--tlsverify`` flags with the CA and the node certificate of ``certs`` (none without)."""
    if certs is None:
        return []
    return [
        "--tlsverify", "--tlscacert", str(certs["ca-cert"]),
        "--tlscert", str(certs["node-cert"]), "--tlskey", str(certs["node-key"]),
    ]  # fmt: skip


def docker_cli(
    host: str, *args: str, timeout: float = 60.0, check: bool = True, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the stock docker CLI against ``host`` (tcp://...)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": tempfile.gettempdir(), "DOCKER_HOST": host}
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, env=env, check=check, input=input
    )


def missing() -> str | None:
    for tool in ("dockerd", "containerd", "docker", "busybox", "unshare", "docker-registry"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if os.geteuid() != 0:
        return "dockerd needs root"
    return None


def busybox_tar(directory: Path) -> Path:
    path = directory / "busybox.tar"
    busybox = shutil.which("busybox")
    assert busybox is not None
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("bin")
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
        tar.add(busybox, "bin/busybox")
        for applet in _APPLETS:
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(link)
    return path


def ping(addr: str, certs: dict[str, Path] | None = None) -> bool:
    context = None
    if certs is not None:
        context = ssl.create_default_context(cafile=str(certs["ca-cert"]))
        context.load_cert_chain(str(certs["node-cert"]), str(certs["node-key"]))
    scheme = "http" if context is None else "https"
    try:
        with urllib.request.urlopen(f"{scheme}://{addr}/_ping", timeout=1, context=context) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def start_engine(
    index: int,
    tls: dict[str, Path] | None = None,
    *,
    hostname: str | None = None,
    labels: dict[str, str] | None = None,
    insecure_registries: tuple[str, ...] = (),
) -> DockerEngine:
    """Start dockerd ``index`` on a free loopback port; RuntimeError (after cleaning up) if it never answers.

    ``tls``: certificates from :func:`tests.support.manager.make_certs`; the engine then runs with
    ``--tlsverify`` (clients need a certificate signed by that CA) and its node certificate.
    ``hostname``: the engine runs in a UTS namespace of its own (``unshare --uts``) with that host name, so
    ``/info`` reports it as its ``Name``. ``labels``: engine labels (``--label k=v``).
    ``insecure_registries``: ``--insecure-registry`` addresses (a plain-HTTP registry on loopback).
    """
    root = Path(tempfile.mkdtemp(prefix=f"shd{index}-", dir="/tmp"))
    port = free_port()
    addr = f"127.0.0.1:{port}"
    cmd = [
        "dockerd", "--host", f"tcp://{addr}", "--data-root", str(root / "d"), "--exec-root", str(root / "e"),
        "--pidfile", str(root / "pid"), "--iptables=false", "--ip6tables=false", "--bridge=none",
        "--storage-driver=vfs", "--log-level=warn", *tls_flags(tls),
    ]  # fmt: skip
    for k, v in (labels or {}).items():
        cmd += ["--label", f"{k}={v}"]
    for registry in insecure_registries:
        cmd += ["--insecure-registry", registry]
    if hostname is not None:
        cmd = ["unshare", "--uts", "sh", "-c", f'hostname {hostname} && exec "$@"', "dockerd", *cmd]
    with open(root / "dockerd.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    engine = DockerEngine(addr, root, proc, tls)
    deadline = time.monotonic() + 60
    while not ping(addr, tls):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_engine(engine)
            raise RuntimeError(f"dockerd did not start: {(root / 'dockerd.log').read_text(errors='replace')[-2000:]}")
        time.sleep(0.1)
    return engine


@attrs.define
class Registry:
    """A Docker registry (Debian's ``docker-registry``) on a loopback port, storage in a temporary directory."""

    addr: str
    root: Path
    proc: subprocess.Popen[bytes]

    def stop(self) -> None:
        terminate(self.proc)
        shutil.rmtree(self.root, ignore_errors=True)


def start_registry() -> Registry:
    """Start ``docker-registry`` on 127.0.0.1 (a free port, no auth, deletes allowed); RuntimeError if it never
    answers ``/v2/``."""
    root = Path(tempfile.mkdtemp(prefix="shreg-", dir="/tmp"))
    port = free_port()
    addr = f"127.0.0.1:{port}"
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
        f"    rootdirectory: {root / 'data'}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n"
    )
    with open(root / "registry.log", "wb") as log:
        proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    registry = Registry(addr, root, proc)
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://{addr}/v2/", timeout=1) as r:
                if r.status == 200:
                    return registry
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            text = (root / "registry.log").read_text(errors="replace")[-2000:]
            registry.stop()
            raise RuntimeError(f"docker-registry did not start: {text}")
        time.sleep(0.1)


def stop_engine(engine: DockerEngine) -> None:
    """Kill the engine's process group (dockerd, containerd, shims), unmount and remove its directories."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(engine.proc.pid, signal.SIGTERM)
    try:
        engine.proc.wait(20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(engine.proc.pid, signal.SIGKILL)
        engine.proc.wait(10)
    with contextlib.suppress(ProcessLookupError):  # containerd and shims share the process group
        os.killpg(engine.proc.pid, signal.SIGKILL)
    with open("/proc/mounts") as mounts:
        points = [line.split()[1] for line in mounts if line.split()[1].startswith(str(engine.root))]
    for point in sorted(points, reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)
    shutil.rmtree(engine.root, ignore_errors=True)
