"""Run pgTAP files (the ones `supabase test db` runs) with psql and read their TAP output."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from localdb.cluster import Cluster

TAP_LINE = re.compile(r"^(?P<ok>ok|not ok) (?P<number>\d+)(?: - (?P<description>.*))?$")
PLAN_LINE = re.compile(r"^1\.\.(?P<count>\d+)$")


@dataclass(frozen=True)
class Assertion:
    number: int
    ok: bool
    description: str
    diagnostics: tuple[str, ...] = ()


@dataclass
class TapRun:
    path: Path
    planned: int | None
    assertions: list[Assertion] = field(default_factory=list)
    exit_code: int = 0
    stderr: str = ""

    @property
    def failures(self) -> list[Assertion]:
        return [a for a in self.assertions if not a.ok]

    @property
    def passed(self) -> bool:
        return (
            self.exit_code == 0
            and self.planned is not None
            and self.planned == len(self.assertions)
            and not self.failures
        )

    def summary(self) -> str:
        lines = [f"{self.path.name}: planned {self.planned}, ran {len(self.assertions)}"]
        for failure in self.failures:
            lines.append(f"  not ok {failure.number} - {failure.description}")
            lines.extend(f"    {d}" for d in failure.diagnostics)
        if self.exit_code != 0:
            lines.append(f"  psql exited {self.exit_code}: {self.stderr.strip()}")
        return "\n".join(lines)


def run_file(cluster: Cluster, dbname: str, path: Path, *, user: str = "postgres") -> TapRun:
    """Run one pgTAP file as `user` (the Supabase CLI runs them as `postgres`)."""
    completed = subprocess.run(
        [
            str(cluster.bindir / "psql"),
            "--no-psqlrc",
            "--quiet",
            "--tuples-only",
            "--no-align",
            "--set",
            "ON_ERROR_STOP=1",
            "--host",
            "127.0.0.1",
            "--port",
            str(cluster.port),
            "--username",
            user,
            "--dbname",
            dbname,
            "--file",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    return parse(path, completed.stdout, completed.returncode, completed.stderr)


def parse(path: Path, output: str, exit_code: int = 0, stderr: str = "") -> TapRun:
    run = TapRun(path=path, planned=None, exit_code=exit_code, stderr=stderr)
    pending: Assertion | None = None
    notes: list[str] = []

    def flush() -> None:
        nonlocal pending, notes
        if pending is not None:
            run.assertions.append(
                Assertion(pending.number, pending.ok, pending.description, tuple(notes))
            )
        pending, notes = None, []

    for raw in output.splitlines():
        line = raw.strip()
        if match := PLAN_LINE.match(line):
            flush()
            run.planned = int(match["count"])
        elif match := TAP_LINE.match(line):
            flush()
            pending = Assertion(
                int(match["number"]), match["ok"] == "ok", match["description"] or ""
            )
        elif line.startswith("#") and pending is not None:
            notes.append(line)
    flush()
    return run
