"""The election benchmark's report (``python -m benchmarks election``, :mod:`benchmarks.election`): its tables,
the targets evaluated from them, its plots, and the report's place between markers in the output file.

Reads only the results the measurement made (``benchmarks-election.json`` holds the same).
"""

from __future__ import annotations

import importlib.util
import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

BEGIN, END = "<!-- election:begin -->", "<!-- election:end -->"
#: The name of the build before's swarmha in the handover tables (``--base``).
BASE = "swarmha-base"


def percentiles(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    if not s:
        return {"n": 0}

    def pick(q: float) -> float:
        return s[min(len(s) - 1, round(q * (len(s) - 1)))]

    return {"n": len(s), "p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99), "max": s[-1]}


def requests_per_second(backend: str, rates: dict[str, float]) -> float:
    """The store requests of one idle window, per second (sqlite: transactions; zk: packets incl. pings)."""
    if backend == "sqlite":
        return rates.get("write txn", 0.0) + rates.get("read", 0.0)
    return sum(rates.values())


def machine() -> str:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{platform.machine()}, {os.cpu_count()} cores, {mem:.0f} GiB, Python {platform.python_version()}"


def load() -> str:
    return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def _ms(x: float) -> str:
    return f"{x * 1000:.1f}"


def _rate(value: float) -> str:
    """A per-participant rate to 3 decimals; a difference that rounds to zero shows as 0.000, not -0.000."""
    return f"{round(value, 3) + 0.0:.3f}"


def _row(name: str, p: dict[str, float], fmt: Callable[[float], str], extra: str = "") -> str:
    if not p.get("n"):
        return f"| {name} | 0 | - | - | - | - |{extra}"
    cells = " | ".join(fmt(p[k]) for k in ("p50", "p90", "p99", "max"))
    return f"| {name} | {int(p['n'])} | {cells} |{extra}"


def _handover_table(ho: dict[str, Any], lines: list[str], goals: list[str], label: str, timeout: float) -> None:
    """A handover table (with ratios to swarmha on the same server) and its goal rows, appended in place.

    A ``swarmha-base`` row (``--base``: the build before, its blocks taking turns with the others) is not a peer:
    its ratio cell is this build / the build before, and a goal row compares both builds' ratios to the best peer.
    """
    lines += [
        "| system | n | p50 | p90 | p99 | max | ratio swarmha/peer (p50) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in ho.items():
        p = percentiles(r["samples"]) if "samples" in r else {}
        ratio = ""
        system, _, backend = name.partition(" @ ")
        if system != "swarmha":
            mine = percentiles(ho.get(f"swarmha @ {backend}", {}).get("samples", []))
            if mine.get("n") and p.get("n"):
                ratio = f" {mine['p50'] / p['p50']:.2f} |"
        if r.get("missing") or r.get("error"):
            lines.append(f"| {name} | - | {r.get('missing') or 'error: ' + r['error']} | | | | |")
            continue
        lines.append(_row(name, p, _ms, ratio or " |"))
        if r["failures"]:
            lines.append(f"| ↳ {r['failures']} rounds without a handover within {timeout:g} s | | | | | | |")
    lines.append("")
    for backend in ("etcd", "zk"):
        mine = percentiles(ho.get(f"swarmha @ {backend}", {}).get("samples", []))
        if not mine.get("n"):
            continue
        verdict = "met" if mine["p50"] <= 0.020 else f"MISSED by {_ms(mine['p50'] - 0.020)} ms"
        goals.append(f"| handover p50 ≤ 20 ms on {backend}{label} | {_ms(mine['p50'])} ms | {verdict} |")
        peers = {k: percentiles(v["samples"]) for k, v in ho.items() if k.endswith(f"@ {backend}") and "samples" in v}
        base = peers.pop(f"{BASE} @ {backend}", {})
        peers.pop(f"swarmha @ {backend}", None)
        peers = {k: v for k, v in peers.items() if v.get("n")}
        if peers:
            best_name, best = min(peers.items(), key=lambda kv: kv[1]["p50"])
            times = mine["p50"] / best["p50"]
            goals.append(
                f"| handover ≤ 1.0x the best peer on {backend}{label} ({best_name.split(' @ ')[0]}) | {times:.2f}x | "
                f"{'met' if times <= 1.0 else f'MISSED by {(times - 1) * 100:.0f} %'} |"
            )
            if base.get("n"):
                before = base["p50"] / best["p50"]
                goals.append(
                    f"| handover ratio to the best peer no worse than the build before's on {backend}{label} | "
                    f"{times:.2f}x against {before:.2f}x | {'met' if times <= before else 'worse'} |"
                )


def report(results: dict[str, Any], command: str, out_dir: Path) -> str:
    lines: list[str] = [
        f"Command: `{command}`  ",
        f"Machine: {results['machine']}; load average at start {results['load_start']}, "
        f"at end {results['load_end']} (other engineers' test runs share the 2 cores)  ",
        f"Date: {results['date']}; elapsed {results['elapsed']:.0f} s"
        + ("; **--quick: smoke figures, too few rounds to mean much**" if results["quick"] else ""),
        "",
    ]
    if results.get("base"):
        lines += [
            f"`--base`: `{BASE}` is the build {results['base']} (this build: {results['new']}), run from a checkout "
            "of its own. Every handover block (10 rounds; the systems take turns) then runs in a new process of its "
            "build's checkout, this build's and the peers' too, so the builds are measured alike and side by side.",
            "",
        ]
    goals: list[str] = []
    if "handover" in results:
        lines += [
            "### Graceful handover",
            "",
            f"Leader gives up → the contender that waited {results['settle']}-{2 * results['settle']:g} s (random) "
            "knows it leads (ms); both contenders are threads of one process. "
            "Same server, same run; ratio = swarmha p50 / peer p50 on that server.",
            "",
        ]
        _handover_table(results["handover"], lines, goals, "", results["round_timeout"])
    if "handover_procs" in results:
        settle = results["settle"] * results["proc_settle"]
        lines += [
            "### Graceful handover between processes",
            "",
            f"The same, but each contender is its own process (`python -m benchmarks.contenders`, as a deployment "
            f"runs them); the leader's process notes the time right before it gives up, the waiting process (which "
            f"waited {settle:g}-{2 * settle:g} s) when it knows it leads (both `CLOCK_MONOTONIC`), in ms.",
            "",
        ]
        _handover_table(results["handover_procs"], lines, goals, ", processes", results["round_timeout"])
    if "crash" in results:
        lines += [
            "### Crash failover (SIGKILL of the leader process)",
            "",
            "SIGKILL at a random phase of the renewal period → the waiting process knows it leads "
            "(seconds, and as a multiple of ttl).",
            "",
            "| system | ttl | n | p50 | p90 | p99 | max | max / ttl |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, r in results["crash"].items():
            if r.get("missing") or r.get("error"):
                lines.append(f"| {name} | - | - | {r.get('missing') or 'error: ' + r['error']} | | | | |")
                continue
            p = percentiles(r["samples"])
            ttl = r["ttl"]
            if p.get("n"):
                cells = " | ".join(f"{p[k]:.3f} s ({p[k] / ttl:.2f}x)" for k in ("p50", "p90", "p99", "max"))
                lines.append(f"| {name} | {ttl:g} s | {int(p['n'])} | {cells} | {p['max'] / ttl:.2f} |")
                if name.startswith("swarmha"):
                    over = p["max"] - ttl - 0.5
                    verdict = "met" if over <= 0 else f"MISSED by {over:.3f} s"
                    goals.append(
                        f"| crash failover ≤ ttl + 0.5 s ({name.split(' @ ')[1]}) | max {p['max']:.3f} s "
                        f"(ttl {ttl:g} s) | {verdict} |"
                    )
            if r["failures"]:
                lines.append(f"| {name}: {r['failures']} rounds without a new leader within ttl + 10 s | | | | | | | |")
        lines.append("")
    if "elect" in results:
        lines += [
            "### Time to elect one leader among N candidates",
            "",
            "N swarmha candidates (threads of one process, each with its own Discovery and connection, all "
            "started together on a vacant key) → the first one leads (ms). Exactly one led in every round.",
            "",
            "| backend | N | n | p50 | p90 | p99 | max |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, r in results["elect"].items():
            backend, _, n = name.partition(" N=")
            p = percentiles(r["samples"])
            if r.get("error"):
                lines.append(f"| {backend} | {n} | error: {r['error']} | | | | |")
                continue
            lines.append(_row(f"{backend} | {n}", p, _ms))
        lines.append("")
    if "idle" in results:
        ttl = results["idle_ttl"]
        lines += [
            "### Idle cost",
            "",
            f"An idle leader (ttl {ttl:g} s, renewing every {ttl / 3:.1f} s) plus N followers and N waiting "
            "candidates, each with its own Discovery (as separate processes would have), over a "
            f"{results['idle_seconds']:g} s window. Requests are counted by the server (see below); CPU is the "
            "share of one core used by this process (all 1 + 2N participants) and by the server process.",
            "",
            "| backend | N | store requests/s | per ttl | above N=0, per follower/candidate per s | breakdown (/s) | "
            "client CPU | server CPU |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for backend, rows in results["idle"].items():
            base = requests_per_second(backend, rows[0]["rates"]) if rows and rows[0]["n"] == 0 else None
            for r in rows:
                rps = requests_per_second(backend, r["rates"])
                per = "-" if base is None or r["n"] == 0 else _rate((rps - base) / (2 * r["n"]))
                shown = {k: v for k, v in r["rates"].items() if v > 0.0005}
                breakdown = ", ".join(f"{k} {v:.2f}" for k, v in sorted(shown.items(), key=lambda kv: -kv[1])[:5])
                srv = "-" if r["server_cpu"] is None else f"{r['server_cpu'] * 100:.1f} %"
                lines.append(
                    f"| {backend} | {r['n']} | {rps:.2f} | {rps * ttl:.1f} | {per} | {breakdown} | "
                    f"{r['cpu'] * 100:.1f} % | {srv} |"
                )
            if base is not None:
                leader_only = base * ttl
                if backend == "etcd":
                    leader_only = rows[0]["rates"].get("LeaseKeepAlive", 0.0) * ttl
                note = " (packets, heartbeat pings of its 2 connections included)" if backend == "zk" else ""
                goals.append(
                    f"| idle leader ≤ 3 store requests per ttl ({backend}) | {leader_only:.1f}{note} | "
                    f"{'met' if leader_only <= 3.3 else 'MISSED'} |"
                )
            biggest = rows[-1] if rows else None
            if base is not None and biggest is not None and biggest["n"]:
                per = (requests_per_second(backend, biggest["rates"]) - base) / (2 * biggest["n"])
                goals.append(
                    f"| followers/waiting candidates: no periodic requests ({backend}, N={biggest['n']}) | "
                    f"{_rate(per)} req/s each | {'met' if per < 0.01 else 'MISSED (see below)'} |"
                )
        lines.append("")
    for error in results.get("errors", []):
        lines.append(f"- measurement failed: {error}")
    if goals:
        lines = [
            "### Targets, evaluated from the figures below",
            "",
            "| goal | measured | |",
            "|---|---|---|",
            *goals,
            "",
            *lines,
        ]
    for name in ("handover", "crash", "idle"):
        if (out_dir / "img" / f"election-{name}.png").exists():
            lines.append(f"![{name}](img/election-{name}.png)")
    return "\n".join(lines) + "\n"


def plots(results: dict[str, Any], img: Path) -> None:
    if importlib.util.find_spec("matplotlib") is None:
        print("matplotlib is not installed (pip install -e '.[bench]'): no plots", flush=True)
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img.mkdir(parents=True, exist_ok=True)
    for part, unit, scale in (("handover", "ms", 1000.0), ("crash", "x ttl", 0.0)):
        if part not in results:
            continue
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for name, r in results[part].items():
            s = sorted(r["samples"])
            if not s:
                continue
            xs = [x * scale for x in s] if scale else [x / r["ttl"] for x in s]
            ys = [(i + 1) / len(s) for i in range(len(s))]
            ax.step(xs, ys, where="post", label=name, linewidth=2.2 if name.startswith("swarmha") else 1.2)
        if part == "handover":
            ax.set_xscale("log")
            ax.axvline(20, color="grey", linestyle=":", label="goal p50 ≤ 20 ms")
            ax.set_title("Graceful handover: leader gives up → next leads (CDF)")
        else:
            ttl = next(iter(results["crash"].values()))["ttl"]
            ax.axvline((ttl + 0.5) / ttl, color="grey", linestyle=":", label="goal ≤ ttl + 0.5 s")
            ax.set_title(f"Crash failover: SIGKILL → next leads (CDF, ttl = {ttl:g} s)")
        ax.set_xlabel(unit)
        ax.set_ylabel("fraction of rounds")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        fig.savefig(img / f"election-{part}.png", dpi=90)
        plt.close(fig)
    if "idle" in results:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
        for backend, rows in results["idle"].items():
            ns = [max(r["n"], 0) for r in rows]
            a1.plot(ns, [requests_per_second(backend, r["rates"]) for r in rows], marker="o", label=backend)
            a2.plot(ns, [r["cpu"] * 100 for r in rows], marker="o", label=f"{backend} client")
            if rows and rows[0]["server_cpu"] is not None:
                a2.plot(
                    ns, [r["server_cpu"] * 100 for r in rows], marker="x", linestyle="--", label=f"{backend} server"
                )
        a1.set_xscale("symlog", linthresh=1)
        a2.set_xscale("symlog", linthresh=1)
        a1.set_title("store requests/s (1 leader + N followers + N candidates)")
        a2.set_title("CPU, % of one core")
        for a in (a1, a2):
            a.set_xlabel("N")
            a.grid(True, alpha=0.3)
            a.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(img / "election-idle.png", dpi=90)
        plt.close(fig)


def write_report(section: str, path: Path) -> None:
    body = f"{BEGIN}\n{section}{END}\n"
    if path.exists():
        text = path.read_text()
        if BEGIN in text and END in text:
            head, rest = text.split(BEGIN, 1)
            tail = rest.split(END, 1)[1].lstrip("\n")
            path.write_text(head + body + tail)
            return
        path.write_text(text.rstrip("\n") + "\n\n" + body)
        return
    path.write_text("# Benchmarks\n\n## Election (library)\n\n" + body)
