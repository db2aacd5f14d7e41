"""The manager front's two request parsers agree: every request head that the llhttp path (:func:`_parse_fast`)
accepts, h11 accepts with the same method, target, version, headers and body framing; whatever the llhttp path
does not accept is left to h11 (which then decides as it did alone), so llhttp first changes no verdict and no
meaning. Generated heads mix usual header lines with one questionable, ambiguous or malformed line.
"""

from __future__ import annotations

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarmha.manager.http import _exchange, parsers
from tests.support.helpers import LONG_SECONDS

pytestmark = pytest.mark.skipif(parsers.httptools is None, reason="httptools is not installed")


def test_the_common_request_head_takes_the_llhttp_path() -> None:
    parsed = parsers._parse_fast(b"GET /v1.41/containers/json?all=1 HTTP/1.1\r\nHost: x\r\nUser-Agent: t \r\n\r\n")
    assert parsed is not None
    head, length = parsed
    assert (head.method, head.target, head.http_version, head.headers, length) == (
        b"GET",
        b"/v1.41/containers/json?all=1",
        b"1.1",
        [(b"Host", b"x"), (b"User-Agent", b"t")],
        0,
    )
    post = b"POST /containers/create HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\n"
    assert parsers._parse_fast(post) is not None
    assert parsers._parse_fast(post)[1] == 12  # type: ignore[index]


ACCEPTED: list[bytes] = []  # heads the llhttp path took in the differential test below
_METHODS = [b"GET", b"GET", b"POST", b"HEAD", b"DELETE", b"get", b"FOO", b"CONNECT", b"G\x00T", b""]
_TARGETS = [
    b"/",
    b"/_ping",
    b"/v1.41/info",
    b"/v1.41/containers/json?all=1",
    b"http://x/a",
    b"*",
    b"/a#b",
    b"/\xc3\xa9",
    b"/a b",
    b'/"{}',
    b"",
]
_VERSIONS = [*[b"HTTP/1.1"] * 4, *[b"HTTP/1.0"] * 2, b"HTTP/1.2", b"HTTP/2.0", b"HTTP/0.9", b"HTTP/1.1 ", b"http/1.1"]
_SEPARATORS = [*[b" "] * 6, b"  ", b"\t"]
_HEADER_LINES = [  # each fine on its own (Host aside)
    b"Content-Length: 5",
    b"Content-Length: 0",
    b"content-length: 007",
    b"Content-Length:  5 ",
    b"Connection: close",
    b"Connection: keep-alive, Close",
    b"X-A: a b",
    b"X-A:   a \t",
    b"X-A: a\tb",
    b"X-A: \xff\x80",
    b"X-Registry-Auth: e30=",
    b"Expect: 100-continue",
]
_ODD_LINES = [  # questionable, ambiguous or malformed
    b"Host: y",
    b"Host:",
    b"Host : x",
    b"Content-Length: 6",
    b"Content-Length: +5",
    b"Content-Length: 5, 5",
    b"Content-Length: 99999999999999999999999",
    b"Transfer-Encoding: chunked",
    b"Transfer-Encoding: gzip",
    b"Connection: Upgrade",
    b"Upgrade: tcp",
    b"X-A: a\rb",
    b"X-A: a\x00b",
    b"X-A: a\x01b",
    b"X-A: a\x7f",
    b" folded",
    b"\tfolded",
    b"X@A: a",
    b": a",
    b"X-A",
]


# 400 heads per suite run; ten times that at a soak's length (SWARMHA_LONG_SECONDS set)
@settings(max_examples=4000 if LONG_SECONDS else 400, deadline=None)
@given(
    method=st.sampled_from(_METHODS),
    target=st.sampled_from(_TARGETS),
    version=st.sampled_from(_VERSIONS),
    seps=st.tuples(st.sampled_from(_SEPARATORS), st.sampled_from(_SEPARATORS)),
    host=st.sampled_from([b"Host: x", b"Host: x", b"host: y ", b""]),
    lines=st.lists(st.sampled_from(_HEADER_LINES), max_size=4),
    odd=st.tuples(st.none() | st.sampled_from(_ODD_LINES) | st.binary(max_size=10), st.integers(0, 4)),
    line_end=st.sampled_from([b"\r\n"] * 6 + [b"\n"]),
)
def test_every_head_the_llhttp_path_accepts_h11_accepts_alike(
    method: bytes,
    target: bytes,
    version: bytes,
    seps: tuple[bytes, bytes],
    host: bytes,
    lines: list[bytes],
    odd: tuple[bytes | None, int],
    line_end: bytes,
) -> None:
    """Differential: a head that :func:`_parse_fast` takes is one h11 takes, with the same method, target, version,
    headers and body framing; so putting llhttp first changes no verdict and no meaning (whatever it does not
    take, h11 parses as before)."""
    lines = [host, *lines]
    if odd[0] is not None:
        lines.insert(odd[1], odd[0])
    head = method + seps[0] + target + seps[1] + version + b"\r\n" + b"".join(ln + line_end for ln in lines if ln)
    head += b"\r\n"
    end = head.find(b"\r\n\r\n")
    if end < 0:
        return
    head = head[: end + 4]  # what the server hands to _parse_fast: up to the first empty line
    fast = parsers._parse_fast(head)
    if fast is None:
        return
    ACCEPTED.append(head)
    parsed, length = fast
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(head)
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError as e:
        raise AssertionError(f"the llhttp path accepted what h11 rejects ({e}): {head!r}") from e
    assert isinstance(event, h11.Request), head
    assert (parsed.method, parsed.target, parsed.http_version) == (event.method, event.target, event.http_version)
    assert parsed.headers == event.headers.raw_items(), head
    assert _exchange._check_framing(event.http_version, event.headers.raw_items()) == (False, length), head
    follows = conn.next_event()
    assert (follows is h11.NEED_DATA) if length else (type(follows) is h11.EndOfMessage), head
