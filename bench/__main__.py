"""Run benchmarks by name: ``python -m bench NAME [--quick] [options]`` or ``python -m bench all``.

Every benchmark prints its figures and the machine it ran on, and writes
``bench/results/<name>.json`` (plots into ``docs/img/``); ``--quick`` is a smoke run of a few
seconds whose results go to a temporary directory unless ``--results-dir`` is given.
``python -m bench NAME --help`` lists a benchmark's own options.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from bench import common

BENCHMARKS: dict[str, str] = {
    # name -> module; a module has run(args) -> dict and optionally add_arguments(parser).
    "ingest": "bench.ingest",
    "cold_start": "bench.cold_start",
    "validation": "bench.validation",
    "concurrency": "bench.concurrency",
    "realtime": "bench.realtime",
    "queries": "bench.queries",
    "growth": "bench.growth",
    "small": "bench.small",
}


def _parse(name: str, argv: list[str]) -> argparse.Namespace:
    """Arguments for one benchmark: the common ones plus the module's own."""
    module = importlib.import_module(BENCHMARKS[name])
    parser = argparse.ArgumentParser(prog=f"python -m bench {name}", description=module.__doc__)
    common.add_common_arguments(parser)
    add = getattr(module, "add_arguments", None)
    if add is not None:
        add(parser)
    return parser.parse_args(argv)


def _usage() -> str:
    return (
        "usage: python -m bench NAME [--quick] [--results-dir DIR] [options]\n"
        f"NAME: {', '.join(BENCHMARKS)}, or all (every benchmark with its defaults;\n"
        "      only --quick and --results-dir are passed on)\n"
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage() + "\n" + (__doc__ or ""))
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name == "all":
        shared = argparse.ArgumentParser(prog="python -m bench all")
        common.add_common_arguments(shared)
        given = shared.parse_args(rest)
        forwarded = ["--quick"] if given.quick else []
        if given.results_dir is not None:
            forwarded += ["--results-dir", str(given.results_dir)]
        runs = [(each, _parse(each, forwarded)) for each in BENCHMARKS]
    elif name in BENCHMARKS:
        runs = [(name, _parse(name, rest))]
    else:
        print(f"unknown benchmark {name!r}\n" + _usage(), file=sys.stderr)
        return 2
    for each, args in runs:
        print(f"### benchmark {each}", flush=True)
        module = importlib.import_module(BENCHMARKS[each])
        module.run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
