"""Engine lists without a store, as Swarm classic read them: ``nodes://h:p,h:p``, a bare ``h:p,h:p``, ``file:///path``.

* A host list names engines separated by commas. ``10.0.0.[1:3]:2375`` is a range, as in Swarm
  (``10.0.0.1:2375``, ``10.0.0.2:2375``, ``10.0.0.3:2375``); so is ``node-[01:03]:2375``.
* A file holds one such entry a line; blank lines and lines starting with ``#`` are skipped. It is read again
  on every engine refresh, so a changed file is picked up without a restart. A file that cannot be read keeps
  the last list it gave and is said once (one WARN, one INFO when it reads again). A file that does not exist yet
  at start is waited for (no engines until it appears), as Swarm did; one in a directory that does not exist
  is refused.

Every entry is checked (``HOST:PORT``); a bad one raises :class:`~swarmha.errors.ConfigurationError` at start, and
is skipped with one WARN when it appears in a file later.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from swarmha.errors import ConfigurationError
from swarmha.manager._config import parse_address

__all__ = ["FileEngines", "expand", "host_list", "is_host_list"]

log = logging.getLogger("swarmha.manager")

_RANGE = re.compile(r"\[(\d+):(\d+)\]")


def expand(entry: str) -> list[str]:
    """Swarm's range form: ``10.0.0.[1:3]:2375`` -> three addresses; other entries as they are."""
    m = _RANGE.search(entry)
    if m is None:
        return [entry]
    lo_s, hi_s = m.group(1), m.group(2)
    lo, hi = int(lo_s), int(hi_s)
    if lo > hi:
        raise ConfigurationError(f"invalid range {m.group(0)!r} in {entry!r}: the start is after the end")
    if hi - lo >= 4096:
        raise ConfigurationError(f"range {m.group(0)!r} in {entry!r} names more than 4096 engines")
    width = len(lo_s) if lo_s.startswith("0") and len(lo_s) > 1 else 0
    return [entry[: m.start()] + str(i).zfill(width) + entry[m.end() :] for i in range(lo, hi + 1)]


def _address(entry: str, where: str) -> str:
    host, port = parse_address(entry, where)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_host_list(url: str) -> bool:
    """True for ``nodes://...`` and for a bare ``host:port[,host:port]`` (no scheme)."""
    return url.startswith("nodes://") or ("://" not in url and ":" in url)


def host_list(url: str) -> tuple[str, ...]:
    """The addresses of ``nodes://h:p,h:p`` or a bare ``h:p,h:p`` (ranges expanded), checked."""
    rest = url[len("nodes://") :] if url.startswith("nodes://") else url
    rest = rest.strip("/")
    if not rest:
        raise ConfigurationError(f"discovery URL {url!r} lists no nodes: expected nodes://HOST:PORT,HOST:PORT")
    out: list[str] = []
    for part in rest.split(","):
        for entry in expand(part.strip()):
            out.append(_address(entry, f"node in {url!r}"))
    return tuple(dict.fromkeys(out))


def _parse_lines(text: str, path: str) -> list[str]:
    out: list[str] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        for entry in expand(line):
            out.append(_address(entry, f"{path} line {number}"))
    return list(dict.fromkeys(out))


class FileEngines:
    """``file:///path``: the engines listed in a file, read on every call (see the module docstring)."""

    def __init__(self, url: str) -> None:
        path = url[len("file://") :]
        if not path:
            raise ConfigurationError(f"discovery URL {url!r} names no file: expected file:///PATH")
        self.path = Path(path)
        self._failing = ""
        try:
            self._last = _parse_lines(self.path.read_text(), str(self.path))
        except FileNotFoundError:
            if not self.path.parent.is_dir():
                raise ConfigurationError(f"discovery file {self.path}: its directory does not exist") from None
            self._last = []  # not there yet: waited for, as Swarm did
            self._failing = "No such file or directory"
            log.warning("the engine list %s does not exist yet; waiting for it", self.path)
        except OSError as e:
            raise ConfigurationError(f"discovery file {self.path}: {e.strerror or e}") from None

    def __call__(self) -> list[str]:
        """The current list; the last good one (and one WARN) while the file cannot be read or parsed."""
        try:
            entries = _parse_lines(self.path.read_text(), str(self.path))
        except (OSError, ConfigurationError) as e:
            error = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            if error != self._failing:
                log.warning("cannot read the engine list %s: %s; keeping the last one", self.path, error)
                self._failing = error
            return list(self._last)
        if self._failing:
            log.info("the engine list %s reads again", self.path)
            self._failing = ""
        self._last = entries
        return list(entries)
