"""The Consul backend's HTTP client against py-consul, on the Consul API double: which one serves the backend better.

    python -m benchmarks consul-client [--requests 2000] [--threads 4] [--watches 50]

Both clients talk to the same :class:`tests.support.consul_double.ConsulDouble` (in this process, on loopback;
it is an API double, not Consul: absolute figures say little about a real agent, the ratios between the two
clients on the same double do). The contenders:

* ``swarmha`` -- the backend's own client (``swarmha.discovery.consul._client``: httpx over an httpcore pool
  whose sockets another thread can shut down, at most ``--threads`` connections);
* ``py-consul`` -- ``consul.Consul`` of the py-consul package (requests; the maintained successor of
  python-consul2), as a user would build it.

What is measured, each a row of the printed table:

* requests per second for a KV read (``GET /v1/kv/KEY``), from one thread, then from ``--threads`` threads;
* requests per second for a session renewal (``PUT /v1/session/renew/ID``), the backend's periodic request;
* connections the double accepted for all of that (the backend's budget: its pool size, plus one for watches);
* watch latency: a blocking query (``?recurse&index=N&wait=5m``) on a prefix is in flight; a ``PUT`` of a key
  under it is sent; the time from that PUT's answer to the blocking query's answer, p50 and p99;
* aborting a blocking query from another thread (what ``Watch.close`` and ``Discovery.close`` need): the time
  from the abort to the blocked thread's return; py-consul has no abort, so closing its ``requests`` session is
  what is tried, with a 3 s wait on the query as the bound.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

from tests.support.consul_double import ConsulDouble

try:
    import consul as py_consul
except ImportError:  # pragma: no cover - the bench extra installs it
    py_consul = None

from swarmha.discovery.consul._client import Agents, Client, index_of

PREFIX = "bench"


class _Counting:
    """Counts the connections the double accepts (its own ``track`` hook sees every one)."""

    def __init__(self, double: ConsulDouble) -> None:
        self.accepted = 0
        self._lock = threading.Lock()
        original = double.track

        def track(conn: Any, add: bool) -> None:
            if add:
                with self._lock:
                    self.accepted += 1
            original(conn, add)

        double.track = track  # type: ignore[method-assign]


class Contender:
    """One client's way of sending the benchmark's requests."""

    name = ""

    def get(self, key: str) -> None: ...
    def put(self, key: str, value: str) -> None: ...
    def session(self) -> str: ...
    def renew(self, sid: str) -> None: ...
    def index(self) -> int: ...
    def block(self, index: int, wait: str) -> int: ...
    def abort(self) -> None: ...
    def close(self) -> None: ...


class Swarmha(Contender):
    name = "swarmha (httpx)"

    def __init__(self, double: ConsulDouble, connections: int) -> None:
        agents = Agents([f"http://{double.address}"], timeout=5.0, headers={}, query={}, ssl_context=None)
        self._client = Client(agents, connections)
        self._watcher = Client(agents, 1)

    def get(self, key: str) -> None:
        self._client.request("GET", f"/v1/kv/{key}")

    def put(self, key: str, value: str) -> None:
        self._client.request("PUT", f"/v1/kv/{key}", content=value.encode())

    def session(self) -> str:
        body = b'{"TTL": "30s", "Behavior": "delete", "LockDelay": "0s"}'
        return str(self._client.request("PUT", "/v1/session/create", content=body).json()["ID"])

    def renew(self, sid: str) -> None:
        self._client.request("PUT", f"/v1/session/renew/{sid}")

    def index(self) -> int:
        return index_of(self._client.request("GET", f"/v1/kv/{PREFIX}/", params={"recurse": ""}))

    def block(self, index: int, wait: str) -> int:
        params = {"recurse": "", "index": str(index), "wait": wait}
        response = self._watcher.request("GET", f"/v1/kv/{PREFIX}/", params=params, read_timeout=400.0)
        return index_of(response)

    def abort(self) -> None:
        self._watcher.abort()

    def close(self) -> None:
        self._client.close()
        self._watcher.close()


class PyConsul(Contender):
    name = "py-consul (requests)"

    def __init__(self, double: ConsulDouble) -> None:
        assert py_consul is not None
        self._client = py_consul.Consul(host=double.host, port=double.port)
        self._watcher = py_consul.Consul(host=double.host, port=double.port)

    def get(self, key: str) -> None:
        self._client.kv.get(key)

    def put(self, key: str, value: str) -> None:
        self._client.kv.put(key, value)

    def session(self) -> str:
        return str(self._client.session.create(ttl=30, behavior="delete", lock_delay=0))

    def renew(self, sid: str) -> None:
        self._client.session.renew(sid)

    def index(self) -> int:
        return int(self._client.kv.get(f"{PREFIX}/", recurse=True)[0])

    def block(self, index: int, wait: str) -> int:
        return int(self._watcher.kv.get(f"{PREFIX}/", recurse=True, index=index, wait=wait)[0])

    def abort(self) -> None:
        self._watcher.http.session.close()

    def close(self) -> None:
        self._client.http.session.close()
        self._watcher.http.session.close()


def _rate(count: int, threads: int, call: Callable[[int], None]) -> float:
    """Requests per second of ``count`` calls spread over ``threads`` threads."""
    per = count // threads

    def work(t: int) -> None:
        for i in range(per):
            call(t * per + i)

    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    start = time.perf_counter()
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return per * threads / (time.perf_counter() - start)


def _watch_latency(c: Contender, double: ConsulDouble, rounds: int) -> list[float]:
    """Seconds from sending a PUT to the blocking query's answer, ``rounds`` times."""
    found: list[float] = []
    for r in range(rounds):
        index = c.index()
        answered: list[float] = []

        def watch(i: int = index, answered: list[float] = answered) -> None:
            c.block(i, "5m")
            answered.append(time.perf_counter())

        served = double.requests
        thread = threading.Thread(target=watch)
        thread.start()
        deadline = time.monotonic() + 5.0
        while double.requests == served and time.monotonic() < deadline:  # the query reached the double
            time.sleep(0.001)
        time.sleep(0.005)  # and is parked there (the double counts a request before it blocks)
        sent = time.perf_counter()
        c.put(f"{PREFIX}/k{r % 10}", f"v{r}")
        thread.join(10.0)
        if not answered:
            raise SystemExit(f"{c.name}: the blocking query did not answer a change within 10 s")
        found.append(answered[0] - sent)
    return found


def _abort_time(c: Contender, double: ConsulDouble) -> float:
    """Seconds from abort() to the blocked thread's return (a 3 s wait bounds the query)."""
    index = c.index()
    done = threading.Event()

    def blocked() -> None:
        with contextlib.suppress(Exception):  # aborted: any error is the expected end
            c.block(index + 1_000_000, "3s")
        done.set()

    served = double.requests
    thread = threading.Thread(target=blocked)
    thread.start()
    deadline = time.monotonic() + 5.0
    while double.requests == served and time.monotonic() < deadline:
        time.sleep(0.001)
    time.sleep(0.05)
    start = time.perf_counter()
    c.abort()
    done.wait(10.0)
    thread.join()
    return time.perf_counter() - start


def measure(c: Contender, double: ConsulDouble, counter: _Counting, args: argparse.Namespace) -> dict[str, float]:
    c.put(f"{PREFIX}/k", "value")
    for _ in range(50):  # warm up: connections open, code paths hot
        c.get(f"{PREFIX}/k")
    one = _rate(args.requests, 1, lambda i: c.get(f"{PREFIX}/k"))
    many = _rate(args.requests, args.threads, lambda i: c.get(f"{PREFIX}/k"))
    sid = c.session()
    renew = _rate(args.requests // 2, 1, lambda i: c.renew(sid))
    latencies = sorted(_watch_latency(c, double, args.watches))
    return {
        "KV reads/s, 1 thread": one,
        f"KV reads/s, {args.threads} threads": many,
        "session renewals/s, 1 thread": renew,
        "watch latency p50 (ms): PUT sent to blocking query answered": statistics.median(latencies) * 1e3,
        "watch latency p99 (ms)": latencies[int(0.99 * (len(latencies) - 1))] * 1e3,
        "connections opened for all of the above (the watcher's included)": counter.accepted,
        "abort a blocked query from another thread (ms)": _abort_time(c, double) * 1e3,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks consul-client", description=__doc__)
    parser.add_argument("--requests", type=int, default=2000, help="requests per throughput row")
    parser.add_argument("--threads", type=int, default=4, help="threads of the concurrent row (swarmha's pool size)")
    parser.add_argument("--watches", type=int, default=50, help="blocking-query rounds for the latency row")
    parser.add_argument("--rounds", type=int, default=3, help="runs per client, interleaved; the table shows medians")
    args = parser.parse_args(argv)
    if py_consul is None:
        raise SystemExit("py-consul is not installed: pip install py-consul (or swarmha[bench])")
    makers: list[Callable[[ConsulDouble], Contender]] = [lambda d: Swarmha(d, args.threads), PyConsul]
    runs: dict[str, list[dict[str, float]]] = {}
    for _ in range(args.rounds):
        for make in makers:
            double = ConsulDouble().start()  # a fresh double each: no state carried over
            counter = _Counting(double)
            contender = make(double)
            try:
                runs.setdefault(contender.name, []).append(measure(contender, double, counter, args))
            finally:
                contender.close()
                double.close()
    names = list(runs)
    rows = list(runs[names[0]][0])
    width = max(len(r) for r in rows)
    print(f"median of {args.rounds} interleaved runs; {args.requests} requests per throughput row")
    print(f"| {'':{width}} | " + " | ".join(names) + " |")
    print(f"| {'-' * width} | " + " | ".join("-" * len(n) for n in names) + " |")
    for row in rows:
        cells = []
        for n in names:
            value = statistics.median(r[row] for r in runs[n])
            cells.append(f"{value:,.2f}" if "latency" in row else f"{value:,.0f}")
        print(f"| {row:{width}} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
