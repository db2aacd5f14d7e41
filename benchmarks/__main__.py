"""One entry point for every benchmark: ``python -m benchmarks PART [--quick] [--out DIR] [part options]``.

* ``election``: swarmha on every backend and its peers (kazoo, the etcd lock, tooz) on the same servers
  (``benchmarks/election.py``; writes ``DIR/benchmarks.md`` and plots under ``DIR/img/``).
* ``core``: the embedded backends alone (``benchmarks/core.py``; writes ``DIR/benchmarks-core.md``).
* ``manager``: the HA Docker manager (``benchmarks/manager.py``; writes ``DIR/benchmarks-manager.md``), then, when
  Swarm classic's binary is built, list and inspect beside it at 1, 3 and 10 engines (``benchmarks/manager_classic.py``;
  its section of the same file).
* ``all``: the three in turn; a part that fails (or is missing) is reported and the others still run.
* ``manager-ab``: the manager's forwarding hop, this checkout against another one (``--base DIR``), interleaved
  (``benchmarks/manager_ab.py``; prints its table).
* ``outage-recovery``: from a restarted store's health to a leader again (``benchmarks/outage_recovery.py``).
* ``scale``: N = 1 .. 10,000 keys x 3 processes, swarmha beside kazoo and the etcd lock (``benchmarks/scale.py``;
  writes its table into ``docs/benchmarks.md``); takes ``--quick`` and ``--out FILE`` too.

* ``consul-client``: the Consul backend's own HTTP client against py-consul on the Consul API double
  (``benchmarks/consul_client.py``; prints its table).
* ``runtime-threads``: what SQLite's change feed thread and ZooKeeper's timer thread buy (handover, wake-ups, idle
  CPU; ``benchmarks/runtime_threads.py``; prints its tables).
* ``stages``: one graceful handover timed stage by stage inside the process (``benchmarks/stages.py``; prints its
  table, or writes it into ``--out FILE``); takes ``--quick`` and ``--out FILE`` too.

``manager-ab``, ``outage-recovery``, ``consul-client`` and ``runtime-threads`` take only their own options
(``python -m benchmarks manager-ab --help``), not --quick/--out.

``--quick`` is the CI smoke mode (each part under a minute, figures mean little); without it, the full runs.
Other options go to the part: ``python -m benchmarks election --help``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

PARTS = ["election", "core", "manager"]
#: Parts run only by name (not by ``all``), with their own options only.
EXTRA = ["manager-ab", "outage-recovery", "scale", "consul-client", "runtime-threads", "stages"]
#: Parts of EXTRA that also take the common --quick / --out (passed on as they are).
EXTRA_COMMON = {"scale", "stages"}


def _runner(part: str) -> Callable[[list[str]], None]:
    """The part's ``main(argv)``; raises SystemExit with a clear message if its module is missing."""
    try:
        module = importlib.import_module(f"benchmarks.{_module(part)}")
    except ModuleNotFoundError as e:
        if e.name != f"benchmarks.{_module(part)}":
            raise
        raise SystemExit(
            f"benchmarks: the {part} benchmark (benchmarks/{_module(part)}.py) is not in this checkout"
        ) from None
    main = module.main
    if part == "core":  # core.main() reads sys.argv itself

        def run_core(argv: list[str]) -> None:
            saved = sys.argv
            sys.argv = ["python -m benchmarks.core", *argv]
            try:
                main()
            finally:
                sys.argv = saved

        return run_core
    if part == "manager":  # then Swarm classic beside swarmha, when its binary is built (it says so otherwise)

        def run_manager(argv: list[str]) -> None:
            main(argv)
            if "-h" not in argv and "--help" not in argv:
                common = ["--quick"] if "--quick" in argv else []
                if "--out" in argv[:-1]:
                    common += ["--out", argv[argv.index("--out") + 1]]
                importlib.import_module("benchmarks.manager_classic").main(common)

        return run_manager
    return lambda argv: main(argv)


def _module(part: str) -> str:
    return part.replace("-", "_")


def _argv(part: str, quick: bool, out: str | None, rest: list[str]) -> list[str]:
    argv = ["--quick"] if quick else []
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        target = Path(out) if part == "election" else Path(out) / f"benchmarks-{part}.md"
        argv += ["--out", str(target)]
    return argv + rest


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) > 1 and argv[0] in PARTS + EXTRA and ("-h" in argv[1:] or "--help" in argv[1:]):
        _runner(argv[0])(argv[1:])  # the part's own help
        return
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("part", choices=[*PARTS, "all", *EXTRA], help="which benchmark to run")
    parser.add_argument("--quick", action="store_true", help="CI smoke mode: under a minute per part")
    parser.add_argument("--out", help="directory for the reports (default: each part's own, under docs/)")
    args, rest = parser.parse_known_args(argv)
    if args.part in EXTRA_COMMON:
        _runner(args.part)((["--quick"] if args.quick else []) + (["--out", args.out] if args.out else []) + rest)
        return
    if args.part in EXTRA:
        if args.quick or args.out is not None:
            parser.error(f"{args.part} takes only its own options (python -m benchmarks {args.part} --help)")
        _runner(args.part)(rest)
        return
    if args.part != "all":
        _runner(args.part)(_argv(args.part, args.quick, args.out, rest))
        return
    failed = []
    for part in PARTS:
        print(f"== benchmarks {part} ==", flush=True)
        try:
            _runner(part)(_argv(part, args.quick, args.out, rest))
        except SystemExit as e:
            if e.code not in (None, 0):
                print(f"benchmarks {part}: {e.code}", file=sys.stderr)
                failed.append(part)
        except Exception:
            traceback.print_exc()
            failed.append(part)
    if failed:
        raise SystemExit(f"benchmarks: failed or missing: {', '.join(failed)}")


if __name__ == "__main__":
    main()
