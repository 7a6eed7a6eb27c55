"""Serve the three functions locally with functions-framework, against the local database.

Each function runs in its own functions-framework process (one target per process, as on
Cloud Functions) on a free loopback port, with the direct sink (DATABASE_URL) and a JWT secret
made for this run, so the printed token works only here.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

import jwt

from localdb.cluster import ROOT, free_port

TARGETS = ("batch_import", "convert_timestamps", "verify_service_jwt")


@dataclass
class FunctionServer:
    target: str
    port: int
    process: subprocess.Popen[bytes]
    jwt_secret: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def mint_service_token(secret: str, ttl_seconds: int = 24 * 3600) -> str:
    now = int(time.time())
    claims = {"role": "service_role", "iss": "supabase-local", "iat": now, "exp": now + ttl_seconds}
    return jwt.encode(claims, secret, algorithm="HS256")


def start(
    target: str,
    database_url: str,
    jwt_secret: str,
    *,
    extra_env: dict[str, str] | None = None,
    quiet: bool = False,
    timeout: float = 30.0,
) -> FunctionServer:
    """Serve ``target`` on a free loopback port until it answers; ``quiet`` drops its log."""
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "SUPABASE_JWT_SECRET": jwt_secret,
        "FUNCTION_TARGET": target,
        **(extra_env or {}),
    }
    env.pop("SUPABASE_URL", None)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "functions_framework",
            "--source=main.py",
            f"--target={target}",
            "--host=127.0.0.1",
            f"--port={port}",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL if quiet else None,
        stderr=subprocess.DEVNULL if quiet else None,
    )
    server = FunctionServer(target, port, process, jwt_secret)
    _wait_until_listening(server, timeout)
    return server


def _wait_until_listening(server: FunctionServer, timeout: float = 30.0) -> None:
    """Wait until the server accepts connections on its port.

    A TCP connection is enough: functions-framework loads the function before it binds the
    port. An HTTP probe would be answered (405, 401) and logged like a caller's error.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"{server.target} exited with {server.process.returncode}; see its log above"
            )
        try:
            socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"{server.target} did not start listening within {timeout:g} s")


def serve(database_url: str) -> list[FunctionServer]:
    secret = secrets.token_urlsafe(48)
    servers: list[FunctionServer] = []
    try:
        for target in TARGETS:
            servers.append(start(target, database_url, secret))
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return servers


def describe(servers: list[FunctionServer], database_url: str, psql: str = "psql") -> str:
    """The commands to try the served functions with, each of which works as printed."""
    by_target = {s.target: s for s in servers}
    token = mint_service_token(servers[0].jwt_secret)
    batch = json.dumps(
        {
            "events": [
                {
                    "user_id": "a1a1a1a1-0000-4000-8000-000000000001",
                    "event_type": "app_open",
                    "timestamp": "2025-06-01T07:30:00",
                    "timezone": "America/New_York",
                    "value": {"platform": "ios", "app_version": "3.5.0"},
                },
                {
                    "user_id": "b2b2b2b2-0000-4000-8000-000000000002",
                    "event_type": "steps_import",
                    "timestamp": "2025-06-01T23:00:00Z",
                    "value": {"steps": 8421, "source": "google_fit"},
                },
            ]
        }
    )
    convert = by_target["convert_timestamps"].url
    # -w '\n': the functions' JSON answers end without a newline; the shell prompt then
    # starts on a line of its own.
    lines = ["", "Functions serving (direct sink into the database above):"]
    for target in TARGETS:
        lines.append(f"  {target:<20} {by_target[target].url}")
    lines += [
        "",
        "Import a small batch with a service-role token minted for this run's JWT secret:",
        f"  export TOKEN={token}",
        f"  curl -sS -w '\\n' -X POST {by_target['batch_import'].url} \\",
        '    -H "Authorization: Bearer $TOKEN" -H "Content-Type: application/json" \\',
        f"    -d '{batch}'",
        "",
        "Then see them arrive:",
        f'  {psql} "{database_url}" -c "select user_id, timestamp, event_type, value'
        " from engagement_events where timestamp >= '2025-01-01' order by timestamp\"",
        "",
        "Check the token, convert a local time to UTC (07:30 in New York on 10 March 2024 is 11:30Z):",
        f"  curl -sS -w '\\n' {by_target['verify_service_jwt'].url} -H \"Authorization: Bearer $TOKEN\"",
        f"  curl -sS -w '\\n' '{convert}?timestamp=2024-03-10T07:30:00&timezone=America/New_York'"
        ' -H "Authorization: Bearer $TOKEN"',
        "",
        "A local time that never happened is refused, on purpose: 02:30 that morning falls in the",
        "gap when New York's clocks jumped from 02:00 to 03:00 (the answer is nonexistent_local_time):",
        f"  curl -sS -w '\\n' '{convert}?timestamp=2024-03-10T02:30:00&timezone=America/New_York'"
        ' -H "Authorization: Bearer $TOKEN"',
    ]
    return "\n".join(lines) + "\n"
