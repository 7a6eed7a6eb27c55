"""Ingest throughput end to end (section 1): batch_import over HTTP against COPY, same rows.

One durable local cluster; the seeded, migrated database with ``--users`` extra users is
cloned three times: one for the function (and the in-process breakdown), one for COPY, one for
the write-strategy comparison. In each repetition, for each size, a new batch of realistic
events is (a) posted to batch_import, served by functions-framework (gunicorn, as on Cloud
Functions) in requests of ``--request-events`` over one keep-alive connection, and (b) the very
same rows (validated and rendered in the benchmark, untimed) loaded with one COPY into the
other database. The order alternates between repetitions; medians are reported.

The breakdown times the handler's stages in-process with the handler's own code: reading and
parsing the body (``functions.http.read_json``),
validation (``functions.validation.normalise_all`` as the handler calls it, with its
per-event size check) less conversion, conversion (the difference to validating the same
events without timestamp and zone), and the sink's write (``PostgresSink.write`` with the
rate limit, one call of ``ingest_engagement_events`` as the handler makes it); what the HTTP
round trip costs beyond their sum is HTTP and gunicorn, the framework, authentication, the
response and its log line.
"""

from __future__ import annotations

import argparse
import http.client
import json
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import flask
import psycopg
from werkzeug.test import EnvironBuilder

from bench import common
from functions import http as fhttp
from functions import validation
from functions.config import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_EVENT_BYTES
from functions.sinks import RateLimit
from functions.sinks.postgres import PostgresSink
from localdb import functions_local

BAR = 0.6


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[10_000, 100_000],
        help="events per import (default: 10000 100000)",
    )
    parser.add_argument(
        "--request-events",
        type=int,
        default=10_000,
        help="events per HTTP request (default 10000, the default MAX_BATCH_EVENTS); a larger "
        "value raises MAX_BATCH_EVENTS for the benchmark's server",
    )
    parser.add_argument("--repeats", type=int, default=5, help="repetitions (medians reported)")
    parser.add_argument("--users", type=int, default=1_000, help="users the events belong to")
    parser.add_argument(
        "--skip-strategies", action="store_true", help="skip the write-strategy comparison"
    )


# --- the two sides -----------------------------------------------------------------------------


def post_batches(
    server: functions_local.FunctionServer,
    bodies: list[bytes],
    durations: list[tuple[int, float]] | None = None,
) -> tuple[float, int]:
    """POST every body over one keep-alive connection; (seconds, events inserted). Each
    request's (events inserted, seconds) is appended to ``durations`` when given."""
    token = functions_local.mint_service_token(server.jwt_secret)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=300)
    inserted = 0
    started = time.perf_counter()
    for body in bodies:
        sent = time.perf_counter()
        conn.request("POST", "/", body, headers)
        response = conn.getresponse()
        answer = json.loads(response.read())
        if durations is not None:
            durations.append((answer.get("inserted", 0), time.perf_counter() - sent))
        if response.status != 200 or answer.get("rejected"):
            raise RuntimeError(f"batch_import answered {response.status}: {str(answer)[:300]}")
        inserted += answer["inserted"]
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed, inserted


def request_bodies(events: list[dict[str, Any]], per_request: int) -> list[bytes]:
    return [
        json.dumps({"events": events[start : start + per_request]}).encode()
        for start in range(0, len(events), per_request)
    ]


def normalise(events: list[dict[str, Any]]) -> list[validation.NormalisedEvent]:
    envelope = validation.parse_envelope({"events": events})
    accepted, rejected = validation.normalise_batch(envelope, received_at=datetime.now(UTC))
    if rejected:
        raise RuntimeError(f"{len(rejected)} generated events are invalid")
    return accepted


# --- the breakdown -----------------------------------------------------------------------------


def breakdown(body: bytes, sink: PostgresSink) -> dict[str, float]:
    """Seconds of each stage of batch_import for one request body, run in-process."""
    environ = EnvironBuilder(
        method="POST", data=body, content_type="application/json"
    ).get_environ()
    request = flask.Request(environ)
    started = time.perf_counter()
    parsed = fhttp.read_json(request, max_body_bytes=DEFAULT_MAX_BODY_BYTES)
    parse = time.perf_counter() - started

    received_at = datetime.now(UTC)
    limit = DEFAULT_MAX_EVENT_BYTES
    max_event_bytes = None if fhttp.body_at_most(request, limit) else limit  # as the handler
    started = time.perf_counter()
    envelope = validation.parse_envelope(parsed)
    rows = validation.normalise_all(
        envelope.events,
        default_timezone=envelope.default_timezone,
        received_at=received_at,
        max_event_bytes=max_event_bytes,
    )
    validate_and_convert = time.perf_counter() - started
    if any(isinstance(row, validation.Rejection) for row in rows):
        raise RuntimeError("generated events were rejected")

    # The conversion happens inside validation's loop, so its share is the difference to
    # validating the same events without timestamp and zone (which then take the time of
    # receipt, converting nothing).
    undated = [
        {key: value for key, value in event.items() if key not in ("timestamp", "timezone")}
        for event in envelope.events
    ]
    started = time.perf_counter()
    validation.normalise_all(
        undated,
        default_timezone=envelope.default_timezone,
        received_at=received_at,
        max_event_bytes=max_event_bytes,
    )
    convert = max(validate_and_convert - (time.perf_counter() - started), 0.0)

    valid = [row for row in rows if isinstance(row, validation.NormalisedEvent)]
    started = time.perf_counter()
    result = sink.write(
        valid,
        atomic=False,
        deadline=time.monotonic() + 300,
        rate=RateLimit("bench:ingest", len(valid), 1_000_000, 1_000_000_000),
    )
    write = time.perf_counter() - started
    if result.inserted != len(valid):
        raise RuntimeError(f"the sink stored {result.inserted} of {len(valid)} rows")
    return {
        "parse": parse,
        "validate": validate_and_convert - convert,
        "convert": convert,
        "write": write,
    }


# --- write strategies --------------------------------------------------------------------------

_INSERT_VALUES = (
    'insert into public.engagement_events (id, user_id, "timestamp", event_type, value) '
    "values {} on conflict (id) do nothing"
)
_INSERT_UNNEST = (
    'insert into public.engagement_events (id, user_id, "timestamp", event_type, value) '
    "select * from unnest(%s::uuid[], %s::uuid[], %s::timestamptz[], %s::text[], %s::jsonb[]) "
    "on conflict (id) do nothing"
)


def _values_insert(
    conn: psycopg.Connection[Any], rows: list[validation.NormalisedEvent], chunk: int
) -> None:
    with conn.transaction(), conn.cursor() as cur:
        for start in range(0, len(rows), chunk):
            part = rows[start : start + chunk]
            placeholders = ",".join(["(%s,%s,%s,%s,%s)"] * len(part))
            params: list[Any] = []
            for row in part:
                params += [
                    common.baseline_id(row),
                    row.user_id,
                    row.timestamp,
                    row.event_type,
                    json.dumps(row.value),
                ]
            cur.execute(_INSERT_VALUES.format(placeholders), params)


def _unnest_insert(conn: psycopg.Connection[Any], rows: list[validation.NormalisedEvent]) -> None:
    with conn.transaction():
        conn.execute(
            _INSERT_UNNEST,
            (
                [common.baseline_id(r) for r in rows],
                [r.user_id for r in rows],
                [r.timestamp for r in rows],
                [r.event_type for r in rows],
                [json.dumps(r.value) for r in rows],
            ),
        )


def _copy_straight(conn: psycopg.Connection[Any], data: bytes) -> None:
    with conn.transaction(), conn.cursor() as cur, cur.copy(common.COPY_EVENTS) as copy:
        copy.write(data)


def write_strategies(
    db_url: str, users: list[uuid.UUID], size: int, repeats: int
) -> dict[str, dict[str, float]]:
    """Rows/s of ways to write ``size`` validated rows, interleaved over ``repeats``."""
    sink = PostgresSink(db_url)
    conn = psycopg.connect(db_url, autocommit=True, prepare_threshold=None)
    small = max(1, min(100, size // 10))

    def sink_chunks(rows: list[validation.NormalisedEvent], chunk: int) -> None:
        for start in range(0, len(rows), chunk):
            sink.write(rows[start : start + chunk], atomic=False, deadline=time.monotonic() + 300)

    def new_connection_each(rows: list[validation.NormalisedEvent]) -> None:
        fresh = PostgresSink(db_url)
        fresh.write(rows, atomic=False, deadline=time.monotonic() + 300)
        fresh.close()

    strategies: dict[str, tuple[int, Any]] = {
        "sink: ingest_engagement_events, one call": (
            size,
            lambda rows: sink_chunks(rows, len(rows)),
        ),
        f"sink in transactions of {max(1, size // 10)} rows": (
            size,
            lambda rows: sink_chunks(rows, max(1, size // 10)),
        ),
        "multi-row INSERT ... ON CONFLICT, 1000 rows per statement": (
            size,
            lambda rows: _values_insert(conn, rows, 1000),
        ),
        "INSERT ... SELECT FROM unnest(arrays) ON CONFLICT": (
            size,
            lambda rows: _unnest_insert(conn, rows),
        ),
        f"sink, {small}-row batch, pooled connection": (
            small,
            lambda rows: sink_chunks(rows, small),
        ),
        f"sink, {small}-row batch, new connection": (small, new_connection_each),
        # The baseline: pre-rendered rows straight into the table, no conflict handling.
        "plain COPY into the table (baseline, rows rendered beforehand)": (
            size,
            lambda data: _copy_straight(conn, data),
        ),
    }
    rates: dict[str, list[float]] = {name: [] for name in strategies}
    seed = 50_000
    for _ in range(repeats):
        for name, (count, write) in strategies.items():
            seed += 1
            rows: Any = normalise(common.make_events(count, users, seed=seed))
            if name.startswith("plain COPY"):
                rows = common.render_copy(rows)
            rates[name].append(count / common.timed(lambda: write(rows)))  # noqa: B023
    sink.close()
    conn.close()
    return {
        name: {"rows_per_second": round(common.median(values)), "rows": strategies[name][0]}
        for name, values in rates.items()
    }


# --- the run -----------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    machine = common.machine_info()
    common.print_machine(machine)
    if args.quick:
        sizes, per_request, repeats, user_count = [500, 1_000], 500, 1, 50
    else:
        sizes, per_request, repeats, user_count = (
            args.sizes,
            args.request_events,
            args.repeats,
            args.users,
        )
    extra_env = {
        # The rate limit stays on (its database round trip is part of every request), with
        # limits this benchmark cannot reach.
        "RATE_LIMIT_REQUESTS_PER_MINUTE": "1000000",
        "RATE_LIMIT_EVENTS_PER_MINUTE": "1000000000",
    }
    if per_request != 10_000:
        extra_env["MAX_BATCH_EVENTS"] = str(per_request)

    function_s: dict[int, list[float]] = {size: [] for size in sizes}
    copy_s: dict[int, list[float]] = {size: [] for size in sizes}
    stages: list[dict[str, float]] = []
    requests: list[tuple[int, float]] = []  # (events, seconds) of every timed request
    strategies: dict[str, dict[str, float]] = {}

    # Durable (fsync on) for real figures; the smoke run only proves the benchmark works.
    with common.bench_database(durable=not args.quick) as template:
        users = common.create_users(template, user_count)
        cluster = template.cluster
        fn_db = common.BenchDatabase(cluster, cluster.clone(template.name, "ingest_function"))
        copy_db = common.BenchDatabase(cluster, cluster.clone(template.name, "ingest_copy"))
        side_db = common.BenchDatabase(cluster, cluster.clone(template.name, "ingest_side"))
        server = common.serve_function("batch_import", fn_db.url, extra_env=extra_env)
        # The breakdown writes into the function's database, where the table has the size the
        # function's requests see; its rows are COPYd into the COPY database too (untimed), so
        # that both tables stay the same size.
        fn_sink = PostgresSink(fn_db.url)
        try:
            # Warm up both sides (first connections, caches) with a small batch each.
            warm = common.make_events(100, users, seed=10**6)
            post_batches(server, request_bodies(warm, per_request))
            common.copy_rows(copy_db, common.render_copy(normalise(warm)))
            warm = common.make_events(100, users, seed=10**6 + 1)
            breakdown(request_bodies(warm, per_request)[0], fn_sink)
            common.copy_rows(copy_db, common.render_copy(normalise(warm)))

            seed = 0
            for rep in range(repeats):
                for size in sizes:
                    seed += 1
                    events = common.make_events(size, users, seed=seed)
                    bodies = request_bodies(events, per_request)
                    copy_data = common.render_copy(normalise(events))
                    for side in ("function", "copy") if rep % 2 == 0 else ("copy", "function"):
                        if side == "function":
                            elapsed, inserted = post_batches(server, bodies, requests)
                            if inserted != size:
                                raise RuntimeError(f"stored {inserted} of {size} events")
                            function_s[size].append(elapsed)
                        else:
                            copy_s[size].append(common.copy_rows(copy_db, copy_data))
                seed += 1
                events = common.make_events(per_request, users, seed=seed)
                stages.append(breakdown(request_bodies(events, per_request)[0], fn_sink))
                common.copy_rows(copy_db, common.render_copy(normalise(events)))
            if not args.skip_strategies:
                strategies = write_strategies(side_db.url, users, min(per_request, 10_000), repeats)
        finally:
            server.stop()
            fn_sink.close()

    per_size: dict[str, Any] = {}
    rows: list[tuple[str, object]] = []
    for size in sizes:
        fn_rate = size / common.median(function_s[size])
        copy_rate = size / common.median(copy_s[size])
        ratio = fn_rate / copy_rate
        # Each repetition runs both sides back to back, so its own ratio cancels most of the
        # machine's drift between repetitions: their spread shows how far one run can be
        # trusted.
        per_repetition = [
            round(copy / function, 2)
            for function, copy in zip(function_s[size], copy_s[size], strict=True)
        ]
        per_size[str(size)] = {
            "function_events_per_second": round(fn_rate),
            "copy_rows_per_second": round(copy_rate),
            "ratio": round(ratio, 2),
            "ratio_per_repetition": per_repetition,
            "requests": -(-size // per_request),
            "function_seconds": [round(s, 3) for s in function_s[size]],
            "copy_seconds": [round(s, 3) for s in copy_s[size]],
        }
        rows += [
            (f"{size:,} events: batch_import events/s", round(fn_rate)),
            (f"{size:,} events: COPY rows/s", round(copy_rate)),
            (f"{size:,} events: ratio (bar {BAR})", round(ratio, 2)),
            (
                f"{size:,} events: ratio per repetition",
                " ".join(f"{r:.2f}" for r in per_repetition),
            ),
        ]

    request_time = common.median([sec for events, sec in requests if events == per_request])
    stage_ms = {name: common.median([s[name] for s in stages]) * 1000 for name in stages[0]}
    stage_table: dict[str, Any] = {
        "events": per_request,
        "ms": {name: round(ms, 1) for name, ms in stage_ms.items()},
    }
    http_ms = request_time * 1000 - sum(stage_ms.values())
    stage_table["ms"]["http_framework_auth_rest"] = round(http_ms, 1)
    stage_table["request_ms_over_http"] = round(request_time * 1000, 1)
    total = sum(stage_table["ms"].values())
    stage_table["share"] = {name: round(ms / total, 3) for name, ms in stage_table["ms"].items()}

    figures: dict[str, Any] = {
        "sizes": per_size,
        "events_per_request": per_request,
        "repeats": repeats,
        "users": user_count,
        "breakdown_per_request": stage_table,
        "write_strategies": strategies,
        "bar": f"batch_import at least {BAR} of the COPY rate",
        "bar_met": all(entry["ratio"] >= BAR for entry in per_size.values()),
    }
    common.print_figures(
        f"ingest over HTTP vs COPY, {per_request:,} events per request, median of {repeats}",
        [*rows, ("bar met", figures["bar_met"])],
    )
    print(f"  where one {per_request:,}-event request's time goes (median, in-process stages):")
    for name, ms in stage_table["ms"].items():
        print(f"    {name:<28} {ms:9.1f} ms  {stage_table['share'][name]:6.1%}")
    if strategies:
        print("  write strategies (rows/s, median):")
        for name, entry in strategies.items():
            print(f"    {entry['rows_per_second']:>9,}  {name}")
    _, img_dir = common.output_dirs(args)
    figures["plot"] = plot(per_size, stage_table, img_dir / "ingest.png")
    common.write_results("ingest", figures, args, machine)
    return figures


def plot(per_size: dict[str, Any], stages: dict[str, Any], path: Path) -> str:
    """Bars of batch_import against COPY per size, and where one request's time goes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    sizes = list(per_size)
    xs = range(len(sizes))
    left.bar(
        [x - 0.2 for x in xs],
        [per_size[s]["function_events_per_second"] for s in sizes],
        width=0.4,
        label="batch_import over HTTP",
    )
    left.bar(
        [x + 0.2 for x in xs],
        [per_size[s]["copy_rows_per_second"] for s in sizes],
        width=0.4,
        label="COPY, same rows",
    )
    for x, size in zip(xs, sizes, strict=True):
        left.annotate(
            f"ratio {per_size[size]['ratio']:.2f}",
            (x, per_size[size]["copy_rows_per_second"]),
            ha="center",
            va="bottom",
        )
    left.set_xticks(list(xs), [f"{int(s):,} events" for s in sizes])
    left.set_ylabel("events per second (median)")
    left.set_title("Ingest throughput")
    left.legend(loc="lower right")
    names = list(stages["ms"])
    bottom = 0.0
    for name in names:
        ms = max(stages["ms"][name], 0.0)
        right.bar([0], [ms], bottom=bottom, label=name, width=0.5)
        bottom += ms
    right.set_xticks([0], [f"one {stages['events']:,}-event request"])
    right.set_ylabel("milliseconds (median)")
    right.set_title("Where the time goes")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"plot: {common.shown(path)}")
    return common.shown(path)
