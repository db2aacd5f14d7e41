"""Swarm classic's command-line conventions for the ``swarmha`` command (:mod:`swarmha.manager.cli`).

* Go's ``flag`` package, as Swarm read its command line: :func:`go_style` turns a one-dash long flag
  (``-cluster-opt``) into argparse's ``--cluster-opt`` and keeps a flag's dashed value (``--replication-ttl -5s``)
  as its value; :class:`Parser` says a bad command line in one line and where the help is.
* Go durations (:func:`go_duration`): ``20s``, ``-5s``, ``1m30s``, ``0``; a bare number is refused naming the
  fix, as Go's ``time.ParseDuration`` refused it. :func:`positive`, :func:`nonnegative`, :func:`heartbeat` and
  :func:`ttl` check them with Swarm's own sentences (``--heartbeat should be at least one second``, ...).
* ``--cluster-opt`` (:func:`cluster_options`: ``swarm.overcommit``, ``swarm.createretry`` with Swarm's checks),
  ``--discovery-opt`` (:func:`with_discovery_opts`), a discovery URL with a mistyped ``://``
  (:func:`check_scheme`).

Every check raises :class:`~swarmha.errors.ConfigurationError` naming the flag and the bad value.
"""

from __future__ import annotations

import argparse
import re
import typing
from collections.abc import Sequence
from urllib.parse import parse_qsl, urlencode

from swarmha._duration import format_duration
from swarmha.errors import ConfigurationError
from swarmha.manager.cluster import NODES_KEY

__all__ = [
    "CLUSTER_OPTS",
    "Parser",
    "check_scheme",
    "cluster_options",
    "count",
    "go_duration",
    "go_style",
    "heartbeat",
    "nonnegative",
    "positive",
    "ttl",
    "with_discovery_opts",
]


#: Accepted range of --replication-ttl / join --ttl, in seconds.
TTL_RANGE = (0.5, 3600.0)


#: Swarm's --cluster-opt keys swarmha honours.
CLUSTER_OPTS = ("swarm.overcommit", "swarm.createretry")


_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)")
_GO_DURATION = re.compile(r"[-+]?(?:(?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|ms|s|m|h))+")
_GO_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def go_duration(text: str, flag: str) -> float:
    """Seconds in a Go duration as Swarm's flags took it (``20s``, ``-5s``, ``1m30s``, ``0``); may be zero or
    negative (the caller says what it needs). ConfigurationError naming the flag otherwise; a bare number is
    refused with the fix (``20`` -> ``20s``), as Go refused it."""
    s = str(text).strip()
    if _NUMBER.fullmatch(s):
        if float(s) == 0:
            return 0.0
        raise ConfigurationError(
            f"invalid {flag} {text!r}: a duration needs a unit (Go durations, as in Swarm): write {s}s for {s} seconds"
        )
    if not _GO_DURATION.fullmatch(s):
        raise ConfigurationError(f"{flag}: invalid duration {text!r} (expected e.g. 20s, 500ms, 1m30s)")
    seconds = sum(float(n) * _GO_UNITS[u] for n, u in _GO_PART.findall(s))
    return -seconds if s.startswith("-") else seconds


def count(text: str | None, flag: str) -> int | None:
    """An integer flag (None when not given); read here rather than by argparse so ``-1`` is a value."""
    if text is None:
        return None
    try:
        return int(str(text).strip())
    except ValueError:
        raise ConfigurationError(f"invalid {flag} {text!r}: not an integer") from None


def positive(text: str, flag: str, sentence: str | None = None) -> float:
    """A duration > 0; else Swarm's ``sentence`` (default ``FLAG should be a positive number``)."""
    seconds = go_duration(text, flag)
    if seconds <= 0:
        raise ConfigurationError(f"{sentence or flag + ' should be a positive number'} ({flag} {text})")
    return seconds


#: Swarm's --discovery-opt keys for TLS to the store, and the etcd URL option each one becomes.
DISCOVERY_TLS_OPTS = {"kv.cacertfile": "ca", "kv.certfile": "cert", "kv.keyfile": "key"}


def ttl(text: str, what: str) -> float:
    """A lock TTL: positive (Swarm's sentence) and within :data:`TTL_RANGE`."""
    seconds = positive(text, what)
    lo, hi = TTL_RANGE
    if not lo <= seconds <= hi:
        raise ConfigurationError(
            f"{what} {text!r} is out of range: it must be between {format_duration(lo)} and {format_duration(hi)}"
        )
    return seconds


def nonnegative(text: str, what: str) -> float:
    """A duration >= 0 (``--delay``, ``--shutdown-timeout``)."""
    seconds = go_duration(text, what)
    if seconds < 0:
        raise ConfigurationError(f"{what} should not be a negative number ({what} {text})")
    return seconds


def heartbeat(text: str) -> float:
    """``--heartbeat``: at least one second, as Swarm required."""
    seconds = go_duration(text, "--heartbeat")
    if seconds < 1:
        raise ConfigurationError(f"--heartbeat should be at least one second (--heartbeat {text})")
    return seconds


#: The discovery schemes, to recognise one written without its ``://``.
_SCHEMES = ("etcd", "zk", "consul", "sqlite", "memory", "nodes", "file", "token")


_MISTYPED = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)(?P<sep>//|:/(?!/)|:(?![0-9\[/]))(?P<rest>.*)")


def check_scheme(url: str) -> None:
    """``etcd//h:2379/x``, ``etcd:/h...``, ``zk:h...``: a scheme with a mistyped ``://``, refused suggesting it."""
    m = _MISTYPED.fullmatch(url)
    if m and m["scheme"].lower() in _SCHEMES:
        fixed = f"{m['scheme']}://{m['rest'].lstrip('/')}"
        raise ConfigurationError(
            f"discovery URL {url!r} is malformed: {m['scheme']}{m['sep']} is not followed by ://; did you mean {fixed}?"
        )


def with_discovery_opts(url: str, opts: list[str]) -> str:
    """Swarm's ``--discovery-opt kv.cacertfile=...`` etc. as this URL's options (TLS to etcd), or refused."""
    extra: list[tuple[str, str]] = []
    for opt in opts:
        key, sep, value = opt.partition("=")
        if not sep or not value:
            raise ConfigurationError(f"--discovery-opt {opt!r} is not KEY=VALUE")
        if key in DISCOVERY_TLS_OPTS:
            if not url.startswith("etcd://"):
                raise ConfigurationError(
                    f"--discovery-opt {key} is supported with etcd:// only (TLS to {url.partition(':')[0]} is not)"
                )
            extra.append((DISCOVERY_TLS_OPTS[key], value))
        elif key == "kv.path":
            if value.strip("/") != NODES_KEY:
                raise ConfigurationError(
                    f"--discovery-opt kv.path={value} is not supported: engines are read from <prefix>/{NODES_KEY}; "
                    "put the prefix in the URL path (etcd://host:2379/PREFIX)"
                )
        else:
            raise ConfigurationError(
                f"--discovery-opt {key} is unknown: swarmha takes kv.cacertfile, kv.certfile, kv.keyfile, kv.path; "
                "other store options go in the URL (?timeout=SECONDS)"
            )
    if not extra:
        return url
    base, _, query = url.partition("?")
    return base + "?" + urlencode([*parse_qsl(query), *extra])


def cluster_options(args: argparse.Namespace) -> tuple[float, int]:
    """(overcommit ratio, create retries) from ``--cluster-opt``, checked with Swarm's sentences."""
    if args.cluster_driver != "swarm":
        raise ConfigurationError(
            f"--cluster-driver {args.cluster_driver!r} is not supported: swarmha has only Swarm's own driver, 'swarm' "
            "(the mesos driver is not implemented)"
        )
    overcommit, retry = 0.0, 0
    for opt in args.cluster_opt or []:
        key, sep, value = opt.partition("=")
        if not sep:
            raise ConfigurationError(f"--cluster-opt {opt!r} is not KEY=VALUE")
        if key == "swarm.overcommit":
            try:
                overcommit = float(value)
            except ValueError:
                raise ConfigurationError(f"--cluster-opt swarm.overcommit={value!r} is not a number") from None
            if not overcommit > -1 or overcommit == float("inf"):
                raise ConfigurationError(f"swarm.overcommit should be larger than -1, {overcommit:f} is invalid")
        elif key == "swarm.createretry":
            try:
                retry = int(value, 0)
            except ValueError:
                raise ConfigurationError(f"--cluster-opt swarm.createretry={value!r} is not an integer") from None
            if retry < 0:
                raise ConfigurationError(f"swarm.createretry can not be negative, {retry} is invalid")
        elif key.startswith("mesos."):
            raise ConfigurationError(
                f"--cluster-opt {key} is not supported: the mesos cluster driver is not implemented"
            )
        else:
            raise ConfigurationError(
                f"--cluster-opt {key} is unknown: swarmha takes {', '.join(CLUSTER_OPTS)} (the engine refresh and "
                "failure options are --engine-refresh-min-interval, --engine-refresh-max-interval, "
                "--engine-failure-retry)"
            )
    return overcommit, retry


class Parser(argparse.ArgumentParser):
    """argparse with Swarm's way of saying a bad command line: one line and where the help is, exit status 2."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: {message}\nSee '{self.prog} --help'.\n")


def value_flags(parser: argparse.ArgumentParser) -> tuple[set[str], set[str]]:
    """(every option string, those that take a value) of ``parser`` and its commands."""
    names: set[str] = set()
    valued: set[str] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                n, v = value_flags(sub)
                names |= n
                valued |= v
            continue
        names.update(action.option_strings)
        if action.nargs != 0:
            valued.update(action.option_strings)
    return names, valued


def go_style(argv: Sequence[str], parser: argparse.ArgumentParser) -> list[str]:
    """The command line as Go's ``flag`` package (Swarm's) reads it, in argparse's terms: ``-cluster-opt X`` is
    ``--cluster-opt X`` and a flag's value is the next word even when it starts with a dash (``--replication-ttl
    -5s``); the words after ``--`` are left alone."""
    names, valued = value_flags(parser)
    out: list[str] = []
    words = list(argv)
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if word == "--":
            out += words[i - 1 :]
            break
        if word.startswith("-") and not word.startswith("--") and len(word) > 2:
            name = word.partition("=")[0]
            if "-" + name in names:
                word = "-" + word
        out.append(word)
        if word in valued and i < len(words) and words[i].startswith("-") and words[i] != "--":
            out[-1] = f"{word}={words[i]}"
            i += 1
    return out
