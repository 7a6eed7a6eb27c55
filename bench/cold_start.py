"""Cold start (section 2): import time of main.py by module, and process start to first answer.

Three measurements, each in fresh processes as a new Cloud Functions instance would start:

- ``python -X importtime -c "import main"``, parsed into a per-module breakdown (the modules
  with the largest cumulative import time), and the wall time of importing main.py (the
  interpreter's own start-up, measured with ``python -c pass``, subtracted);
- which heavy clients are in ``sys.modules`` right after ``import main`` (supabase, Secret
  Manager, psycopg must not be: they are imported when first needed);
- the time from spawning ``functions-framework --target=batch_import`` to its first answered
  request, and to its first stored event (which adds the sink's lazy import and connection).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import secrets
import subprocess
import sys
import time
import uuid
from typing import Any

from bench import common
from localdb import functions_local
from localdb.cluster import ROOT, free_port

HEAVY_MODULES = (
    "supabase",
    "postgrest",
    "httpx",
    "google.cloud.secretmanager",
    "google.api_core",
    "grpc",
    "psycopg",
)
"""Clients that main.py must leave unimported until a request needs them."""

_IMPORTTIME = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeats", type=int, default=7, help="fresh processes per measurement")


def _env(database_url: str, jwt_secret: str) -> dict[str, str]:
    env = {
        **os.environ,
        "FUNCTION_TARGET": "batch_import",
        "DATABASE_URL": database_url,
        "SUPABASE_JWT_SECRET": jwt_secret,
    }
    for name in ("SUPABASE_URL", "SUPABASE_SERVICE_ROLE_KEY", "PYTHONPATH"):
        env.pop(name, None)
    return env


def _python(code: str, env: dict[str, str], *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *flags, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )


def import_breakdown(env: dict[str, str], top: int = 15) -> tuple[float, list[dict[str, Any]]]:
    """(cumulative import time of main in ms, the ``top`` modules by cumulative time)."""
    stderr = _python("import main", env, "-X", "importtime").stderr
    modules: list[dict[str, Any]] = []
    main_ms = 0.0
    for line in stderr.splitlines():
        match = _IMPORTTIME.match(line)
        if match is None:
            continue
        own, cumulative, indent, name = match.groups()
        depth = len(indent) // 2
        entry: dict[str, Any] = {
            "module": name,
            "depth": depth,
            "self_ms": int(own) / 1000,
            "cumulative_ms": int(cumulative) / 1000,
        }
        modules.append(entry)
        if name == "main" and depth == 0:
            main_ms = int(cumulative) / 1000
    modules.sort(key=lambda m: m["cumulative_ms"], reverse=True)
    return main_ms, [m for m in modules if m["module"] != "main"][:top]


def loaded_heavy_modules(env: dict[str, str]) -> list[str]:
    """Which of HEAVY_MODULES are in sys.modules right after ``import main``."""
    code = (
        "import json, sys\nimport main\n"
        f"heavy = {list(HEAVY_MODULES)!r}\n"
        "print(json.dumps(sorted(h for h in heavy if h in sys.modules)))"
    )
    loaded: list[str] = json.loads(_python(code, env).stdout.strip().splitlines()[-1])
    return loaded


def wall_import_ms(env: dict[str, str]) -> float:
    """Wall time of a fresh ``python -c "import main"`` minus that of ``python -c pass``."""
    started = time.perf_counter()
    _python("import main", env)
    with_main = time.perf_counter() - started
    started = time.perf_counter()
    _python("pass", env)
    bare = time.perf_counter() - started
    return (with_main - bare) * 1000


def first_answers(database_url: str, jwt_secret: str, user: uuid.UUID) -> tuple[float, float]:
    """Seconds from spawning functions-framework to its first answer, and to its first
    stored event (a one-event batch_import)."""
    port = free_port()
    started = time.perf_counter()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "functions_framework",
            "--source=main.py",
            "--target=batch_import",
            "--host=127.0.0.1",
            f"--port={port}",
        ],
        cwd=ROOT,
        env=_env(database_url, jwt_secret),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        first = _poll_until_answered(port, process)
        body = json.dumps(
            {
                "events": [
                    {"user_id": str(user), "event_type": "app_open", "value": {"platform": "ios"}}
                ]
            }
        )
        token = functions_local.mint_service_token(jwt_secret)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request(
            "POST",
            "/",
            body,
            {"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        )
        response = conn.getresponse()
        answer = json.loads(response.read())
        stored = time.perf_counter() - started
        conn.close()
        if response.status != 200 or answer.get("inserted") != 1:
            raise RuntimeError(f"the first batch was not stored: {response.status} {answer}")
        return first, stored
    finally:
        process.terminate()
        process.wait(timeout=10)


def _poll_until_answered(port: int, process: subprocess.Popen[bytes]) -> float:
    started = time.perf_counter()
    deadline = started + 60
    while time.perf_counter() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"functions-framework exited with {process.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/")
            conn.getresponse().read()  # any status (405 here) means it is answering
            conn.close()
        except OSError:
            time.sleep(0.005)
            continue
        # Measured from our own Popen call: the caller's clock started just before it.
        return time.perf_counter() - started
    raise RuntimeError("functions-framework did not answer within 60 s")


def run(args: argparse.Namespace) -> dict[str, Any]:
    machine = common.machine_info()
    common.print_machine(machine)
    repeats = 1 if args.quick else args.repeats
    jwt_secret = secrets.token_urlsafe(48)
    with common.bench_database(durable=False) as db:
        user = common.create_users(db, 1)[0]
        env = _env(db.url, jwt_secret)
        heavy = loaded_heavy_modules(env)
        breakdowns = [import_breakdown(env) for _ in range(repeats)]
        walls = [wall_import_ms(env) for _ in range(repeats)]
        answers = [first_answers(db.url, jwt_secret, user) for _ in range(repeats)]

    # The breakdown shown is that of the run whose main import time is the median.
    ordered = sorted(breakdowns, key=lambda b: b[0])
    main_ms, top_modules = ordered[len(ordered) // 2]
    figures: dict[str, Any] = {
        "repeats": repeats,
        "import_main_ms_importtime": round(common.median([b[0] for b in breakdowns]), 1),
        "import_main_ms_wall": round(common.median(walls), 1),
        "first_answer_ms": round(common.median([a[0] for a in answers]) * 1000, 1),
        "first_stored_event_ms": round(common.median([a[1] for a in answers]) * 1000, 1),
        "heavy_modules_after_import": heavy,
        "top_modules_by_cumulative_import": top_modules,
        "bar": "import main.py under 1 s; supabase and Secret Manager imported only when needed",
    }
    figures["bar_met"] = figures["import_main_ms_wall"] < 1000 and not any(
        name.startswith(("supabase", "google.cloud.secretmanager")) for name in heavy
    )
    common.print_figures(
        f"cold start, median of {repeats} fresh processes",
        [
            ("import main (importtime) ms", figures["import_main_ms_importtime"]),
            ("import main (wall, minus bare python) ms", figures["import_main_ms_wall"]),
            ("spawn to first answer ms", figures["first_answer_ms"]),
            ("spawn to first stored event ms", figures["first_stored_event_ms"]),
            ("heavy clients loaded by import main", heavy or "none"),
            ("bar met", figures["bar_met"]),
        ],
    )
    print(f"  top {len(top_modules)} modules by cumulative import time (run of {main_ms:.0f} ms):")
    for module in top_modules:
        print(
            f"    {module['cumulative_ms']:8.1f} ms cumulative {module['self_ms']:7.1f} ms self"
            f"  {'  ' * module['depth']}{module['module']}"
        )
    common.write_results("cold_start", figures, args, machine)
    return figures
