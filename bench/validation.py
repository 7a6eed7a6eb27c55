"""Validation and conversion alone, against the database's insert rate (section 3).

Times ``functions.validation`` (envelope check, then every event validated against its schemas,
its timestamp converted to UTC and its id derived) on realistic batches, and in the same run,
interleaved, the database's insert rate for such events: COPY of pre-rendered rows into
``engagement_events`` (all indexes in place), and the direct sink's write of validated rows.
Prints events/s for each, the ratios, and a cProfile of validation (where its time goes).

Validation runs as batch_import runs it: one path for valid and invalid events alike.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from datetime import UTC, datetime
from typing import Any

from bench import common
from functions import validation
from functions.sinks.postgres import PostgresSink

MIXES: dict[str, dict[str, float]] = {
    # 30% local wall-clock times with their zone, the rest Z or an offset; 2% invalid.
    "mixed": {"local_share": 0.3, "invalid_share": 0.02},
    # Every timestamp local: the conversion's worst case.
    "all_local": {"local_share": 1.0, "invalid_share": 0.0},
    # Every timestamp with Z or an offset: the conversion's best case.
    "all_offset": {"local_share": 0.0, "invalid_share": 0.0},
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", type=int, default=10_000, help="events per batch")
    parser.add_argument("--repeats", type=int, default=7, help="repetitions (medians reported)")


def validate(events: list[dict[str, Any]]) -> tuple[int, int]:
    """Check the envelope and normalise every event, as batch_import does; (valid, rejected)."""
    envelope = validation.parse_envelope({"events": events})
    accepted, rejected = validation.normalise_batch(envelope, received_at=datetime.now(UTC))
    return len(accepted), len(rejected)


def normalised(events: list[dict[str, Any]]) -> list[validation.NormalisedEvent]:
    envelope = validation.parse_envelope({"events": events})
    return validation.normalise_batch(envelope, received_at=datetime.now(UTC))[0]


def profile_top(
    events: list[dict[str, Any]], top: int = 12, rounds: int = 3
) -> list[dict[str, Any]]:
    """cProfile of ``rounds`` validations of ``events`` (one alone is at the mercy of a
    neighbour's burst or a garbage collection): the functions with the most own time."""
    profiler = cProfile.Profile()
    for _ in range(rounds):
        profiler.runcall(validate, events)
    stats = pstats.Stats(profiler)
    total = sum(row[2] for row in stats.stats.values())  # type: ignore[attr-defined]
    rows = sorted(stats.stats.items(), key=lambda item: item[1][2], reverse=True)[:top]  # type: ignore[attr-defined]
    return [
        {
            "function": f"{_short(file)}:{line}({name})",
            "calls": calls[1],
            "own_share": round(own / total, 3),
            "cumulative_share": round(cumulative / total, 3),
        }
        for (file, line, name), (*calls, own, cumulative, _callers) in rows
    ]


def _short(path: str) -> str:
    for marker in ("/functions/", "/site-packages/", "/lib/python"):
        if marker in path:
            return path[path.index(marker) + 1 :]
    return path


def run(args: argparse.Namespace) -> dict[str, Any]:
    machine = common.machine_info()
    common.print_machine(machine)
    size = min(args.events, 1_000) if args.quick else args.events
    repeats = 2 if args.quick else args.repeats
    rates: dict[str, list[float]] = {f"validate_{mix}": [] for mix in MIXES}
    rates["copy"] = []
    rates["sink_write"] = []
    counts: dict[str, tuple[int, int]] = {}

    with common.bench_database() as db:
        users = common.create_users(db, 1_000)
        sink = PostgresSink(db.url)
        sink.write(
            normalised(common.make_events(10, users, seed=0)), atomic=False, deadline=_soon()
        )
        for rep in range(repeats):
            for k, (mix, shares) in enumerate(MIXES.items()):
                events = common.make_events(size, users, seed=1000 * rep + k, **shares)
                started = time.perf_counter()
                counts[mix] = validate(events)
                rates[f"validate_{mix}"].append(size / (time.perf_counter() - started))

            rows = normalised(common.make_events(size, users, seed=1000 * rep + 500))
            rates["copy"].append(len(rows) / common.copy_rows(db, common.render_copy(rows)))

            rows = normalised(common.make_events(size, users, seed=1000 * rep + 700))
            started = time.perf_counter()
            result = sink.write(rows, atomic=False, deadline=_soon())
            rates["sink_write"].append(result.inserted / (time.perf_counter() - started))
        sink.close()

    medians = {name: round(common.median(values)) for name, values in rates.items()}
    mixed = medians["validate_mixed"]
    figures: dict[str, Any] = {
        "events_per_batch": size,
        "repeats": repeats,
        "events_per_second": medians,
        "all_runs": {name: [round(v) for v in values] for name, values in rates.items()},
        "valid_rejected_mixed": counts["mixed"],
        "ratio_validate_mixed_to_copy": round(mixed / medians["copy"], 2),
        "ratio_validate_mixed_to_sink_write": round(mixed / medians["sink_write"], 2),
        "ratio_validate_all_local_to_copy": round(
            medians["validate_all_local"] / medians["copy"], 2
        ),
        "profile_mixed": profile_top(common.make_events(size, users, seed=99, **MIXES["mixed"])),
    }
    common.print_figures(
        f"validation and conversion, {size:,} events per batch, median of {repeats}",
        [
            *((f"{name} events/s", value) for name, value in medians.items()),
            ("valid / rejected (mixed)", counts["mixed"]),
            ("ratio mixed / COPY", figures["ratio_validate_mixed_to_copy"]),
            ("ratio mixed / sink write", figures["ratio_validate_mixed_to_sink_write"]),
            ("ratio all_local / COPY", figures["ratio_validate_all_local_to_copy"]),
        ],
    )
    print("  where validation's time goes (own time, share of total):")
    for row in figures["profile_mixed"]:
        print(f"    {row['own_share']:6.1%}  {row['calls']:>7}  {row['function']}")
    common.write_results("validation", figures, args, machine)
    return figures


def _soon() -> float:
    return time.monotonic() + 120
