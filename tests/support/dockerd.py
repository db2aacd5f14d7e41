"""Real Docker engines on loopback, for the manager tests and benchmarks (no pytest here; the fixture is in
tests/support/docker_engines.py).

Each engine is ``dockerd --host tcp://127.0.0.1:PORT`` with its own data root, exec root (short path: the
managed containerd's unix socket lives there) and pid file, ``--iptables=false --bridge=none
--storage-driver=vfs``; each starts its own managed containerd. Every engine gets the test image
:data:`IMAGE`, made without a registry: a tar of Debian's static busybox with /bin/sh, /bin/echo, ... linked
to it, loaded with ``docker import``.

:func:`missing` names what is missing (dockerd, containerd, docker, busybox, unshare, docker-registry, root) or
returns None. :func:`start_registry` starts a registry on loopback for the engines to pull from and push to.
:func:`kill_engine` / :func:`restart_engine` crash an engine and bring the same one back.
:func:`stop_engine` kills each engine's whole process group (dockerd and its containerd) and removes its directories.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import tarfile
import tempfile
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path

import attrs

from tests.support.net import free_port
from tests.support.procs import stop_group, terminate

IMAGE = "swarmha-test:busybox"
_APPLETS = ("sh", "echo", "cat", "sleep", "true", "false", "ls", "env", "head", "seq", "printf")


@attrs.define
class DockerEngine:
    addr: str
    root: Path
    proc: subprocess.Popen[bytes]
    #: With ``--tlsverify``: the files of :func:`tests.support.manager.make_certs` it was started with.
    tls: dict[str, Path] | None = None
    #: The host name of its own UTS namespace (None: the machine's).
    hostname: str | None = None
    #: Its engine labels (``--label k=v``).
    labels: dict[str, str] = attrs.field(factory=dict)
    insecure_registries: tuple[str, ...] = ()

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
    labels: Mapping[str, str] | None = None,
    insecure_registries: tuple[str, ...] = (),
) -> DockerEngine:
    """Start dockerd ``index`` on a free loopback port; RuntimeError (after cleaning up) if it never answers.

    ``tls``: certificates from :func:`tests.support.manager.make_certs`; the engine then runs with
    ``--tlsverify`` (clients need a certificate signed by that CA) and its node certificate.
    ``hostname``: the engine runs in a UTS namespace of its own (``unshare --uts``) with that host name, so its
    ``/info`` reports it as ``Name`` (what a manager calls the node). ``labels``: engine labels (``--label k=v``).
    ``insecure_registries``: ``--insecure-registry`` addresses (a plain-HTTP registry on loopback).
    """
    root = Path(tempfile.mkdtemp(prefix=f"shd{index}-", dir="/tmp"))
    port = free_port()
    addr = f"127.0.0.1:{port}"
    engine = DockerEngine(addr, root, _spawn(root, addr, tls, hostname, labels, insecure_registries), tls, hostname)
    engine.labels = dict(labels or {})
    engine.insecure_registries = insecure_registries
    _wait_up(engine)
    return engine


def _spawn(
    root: Path,
    addr: str,
    tls: dict[str, Path] | None,
    hostname: str | None,
    labels: Mapping[str, str] | None,
    insecure_registries: tuple[str, ...] = (),
) -> subprocess.Popen[bytes]:
    # dockerd 20.10 derives its engine ID from a trust key, by default the machine's /etc/docker/key.json: a key
    # of its own per engine gives each engine its own ID, as on separate machines.
    config = root / "daemon.json"
    if not config.exists():
        config.write_text(json.dumps({"deprecated-key-path": str(root / "key.json")}))
    cmd = [
        "dockerd", "--host", f"tcp://{addr}", "--data-root", str(root / "d"), "--exec-root", str(root / "e"),
        "--pidfile", str(root / "pid"), "--iptables=false", "--ip6tables=false", "--bridge=none",
        "--storage-driver=vfs", "--log-level=warn", "--config-file", str(config), *tls_flags(tls),
    ]  # fmt: skip
    for k, v in (labels or {}).items():
        cmd += ["--label", f"{k}={v}"]
    for registry in insecure_registries:
        cmd += ["--insecure-registry", registry]
    if hostname is not None:  # a UTS namespace of its own: the host name is the engine's alone
        cmd = ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', hostname, *cmd]
    with open(root / "dockerd.log", "ab") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def kill_engine(engine: DockerEngine) -> None:
    """SIGKILL the engine's whole process group (dockerd, containerd, shims): the node dies as in a crash.

    Its directories stay, so :func:`restart_engine` brings the same engine (same ID, same containers) back.
    """
    with contextlib.suppress(ProcessLookupError):
        os.killpg(engine.proc.pid, signal.SIGKILL)
    engine.proc.wait(20)
    _unmount(engine.root, keep_root=True)


def restart_engine(engine: DockerEngine) -> None:
    """Start a killed engine again on the same address, data root, host name and labels; waits until it answers."""
    (engine.root / "pid").unlink(missing_ok=True)
    shutil.rmtree(engine.root / "e", ignore_errors=True)  # run-time state (a /var/run): a rebooted host starts empty
    engine.proc = _spawn(
        engine.root, engine.addr, engine.tls, engine.hostname, engine.labels, engine.insecure_registries
    )
    _wait_up(engine)


def _wait_up(engine: DockerEngine) -> None:
    addr, root, proc, tls = engine.addr, engine.root, engine.proc, engine.tls
    deadline = time.monotonic() + 60
    while not ping(addr, tls):
        if proc.poll() is not None or time.monotonic() > deadline:
            log = (root / "dockerd.log").read_text(errors="replace")[-2000:]
            stop_engine(engine)
            raise RuntimeError(f"dockerd did not start: {log}")
        time.sleep(0.1)


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
    stop_group(engine.proc, 20)
    with contextlib.suppress(ProcessLookupError):  # containerd and shims share the process group
        os.killpg(engine.proc.pid, signal.SIGKILL)
    _unmount(engine.root)


def _unmount(root: Path, keep_root: bool = False) -> None:
    with open("/proc/mounts") as mounts:
        points = [line.split()[1] for line in mounts if line.split()[1].startswith(str(root))]
    for point in sorted(points, reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)
    if not keep_root:
        shutil.rmtree(root, ignore_errors=True)
