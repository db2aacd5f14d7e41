"""The cursors that let a replica resume a stream on the next primary: what they ask, what they deliver once."""

from __future__ import annotations

import json
import time
from urllib.parse import parse_qs, urlsplit

from swarmha.manager import resume

T0 = 1_780_000_000_000_000_000  # a Unix time in ns


def _stamp(ns: int) -> bytes:
    secs, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)).encode() + b".%09dZ" % frac


def _frame(stream: int, payload: bytes) -> bytes:
    return bytes([stream, 0, 0, 0]) + len(payload).to_bytes(4, "big") + payload


def _query(target: str) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(urlsplit(target).query, keep_blank_values=True).items()}


def _cursor(path: str, query: str) -> resume.Cursor:
    cursor = {"logs": resume._Logs, "events": resume._Events, "stats": resume._Stats}[path.rsplit("/", 1)[-1]]
    return cursor(path, query)


def test_stamps_parse_to_nanoseconds_and_back() -> None:
    assert resume.stamp_ns(_stamp(T0 + 123456789)) == T0 + 123456789
    assert resume.stamp_ns(b"2026-01-01T00:00:00.5+01:00") == resume.stamp_ns(b"2025-12-31T23:00:00.5Z")
    assert resume.stamp_ns(b"line 1") is None
    assert resume.unix_ns(T0 + 5) == "1780000000.000000005"


def test_multiplexed_logs_lose_their_added_timestamps_and_a_resume_delivers_each_line_once() -> None:
    c = _cursor("/v1.41/containers/x/logs", "follow=1&stdout=1&tail=all")
    assert _query(c.target())["timestamps"] == "1"
    c.begin(200, [(b"transfer-encoding", b"chunked"), (b"content-type", b"application/vnd.docker.raw-stream")])
    assert c.resumable
    frames = [_frame(1, _stamp(T0 + i) + b" line %d\n" % i) for i in range(5)]
    stream = b"".join(frames)
    out = c.feed(stream[:30]) + c.feed(stream[30:-3])  # the last frame cut: held back
    assert out == b"".join(_frame(1, b"line %d\n" % i) for i in range(4))
    target = c.resume_target()  # the primary went: everything since the oldest kept line is replayed
    q = _query(target)
    assert q["since"] == resume.unix_ns(T0) and q["tail"] == "all" and q["timestamps"] == "1"
    again = c.feed(stream + _frame(2, _stamp(T0 + 9) + b" err\n"))
    assert again == _frame(1, b"line 4\n") + _frame(2, b"err\n")


def test_identical_lines_with_one_timestamp_are_counted_not_merged() -> None:
    c = _cursor("/containers/x/logs", "follow=1&timestamps=true")
    c.begin(200, [(b"transfer-encoding", b"chunked")])
    line = _stamp(T0) + b" same\n"
    assert c.feed(line * 3) == line * 3  # the client asked for timestamps: kept
    c.resume_target()
    assert c.feed(line * 5) == line * 2  # three were delivered, two are new


def test_a_tty_log_stream_is_split_on_line_ends_and_a_last_partial_line_is_delivered_at_the_end() -> None:
    c = _cursor("/containers/x/logs", "follow=1")
    c.begin(200, [(b"transfer-encoding", b"chunked")])
    assert c.feed(_stamp(T0) + b" a\n" + _stamp(T0 + 1) + b" b") == b"a\n"
    assert c.end() == b"b"


def test_events_are_deduplicated_per_node_and_resumed_since_the_oldest_kept() -> None:
    c = _cursor("/events", "filters=%7B%7D")
    c.begin(200, [(b"transfer-encoding", b"chunked")])

    def ev(node: str, ns: int, name: str) -> bytes:
        e = {"Type": "container", "Action": "create", "Actor": {"ID": name}, "timeNano": ns, "node": {"Addr": node}}
        return json.dumps(e).encode() + b"\n"

    first = ev("a", T0 + 5, "x") + ev("b", T0 + 2, "y")
    assert c.feed(first + ev("a", T0 + 7, "z")[:10]) == first
    assert _query(c.resume_target())["since"] == resume.unix_ns(T0 + 2)
    replay = ev("b", T0 + 2, "y") + ev("a", T0 + 5, "x") + ev("a", T0 + 7, "z")
    assert c.feed(replay) == ev("a", T0 + 7, "z")


def test_stats_samples_not_newer_than_the_last_delivered_are_dropped() -> None:
    c = _cursor("/containers/x/stats", "")
    c.begin(200, [(b"transfer-encoding", b"chunked")])

    def sample(ns: int) -> bytes:
        return json.dumps({"read": _stamp(ns).decode()}).encode() + b"\n"

    assert c.feed(sample(T0) + sample(T0 + 10**9)) == sample(T0) + sample(T0 + 10**9)
    c.resume_target()
    assert c.feed(sample(T0 + 10**9) + sample(T0 + 2 * 10**9)) == sample(T0 + 2 * 10**9)


def test_an_error_answer_is_relayed_as_it_is_and_not_resumed() -> None:
    c = _cursor("/containers/x/logs", "follow=1")
    headers = c.begin(404, [(b"content-length", b"20"), (b"connection", b"close")])
    assert headers == [(b"content-length", b"20")] and not c.resumable
    assert c.feed(b'{"message":"nope"}\n') == b'{"message":"nope"}\n'
