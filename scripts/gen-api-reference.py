#!/usr/bin/env python3
"""Writes the event_type reference and the payload schemas into docs/api-usage.md, from schemas/.

The section between the BEGIN/END GENERATED markers is produced from the JSON Schemas alone
(titles, descriptions, properties, required, enums, bounds, patterns, formats, examples), so the
document cannot drift from what the functions validate. tests/test_api_reference.py fails when
the section differs from what this script produces now.

    .venv/bin/python scripts/gen-api-reference.py           # rewrite the section in place
    .venv/bin/python scripts/gen-api-reference.py --check   # exit 1 and show a diff if stale
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "schemas"
DOC = ROOT / "docs" / "api-usage.md"
BEGIN = "<!-- BEGIN GENERATED: schemas (scripts/gen-api-reference.py; do not edit by hand) -->"
END = "<!-- END GENERATED: schemas -->"


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def prose(text: str) -> str:
    """Schema text as Markdown: `<` outside code spans would start an HTML tag."""
    parts = text.split("`")
    return "`".join(p if i % 2 else p.replace("<", "&lt;") for i, p in enumerate(parts))


def cell(text: str) -> str:
    """Text safe inside a Markdown table cell (GFM splits cells on `|`, even in code spans)."""
    return prose(text).replace("|", "\\|").replace("\n", " ")


def code(value: Any) -> str:
    shown = value if isinstance(value, str) else json.dumps(value)
    return f"`{shown}`"


def first_sentence(text: str) -> str:
    end = text.find(". ")
    return text if end < 0 else text[: end + 1]


def type_of(node: Mapping[str, Any]) -> str:
    kind = node.get("type", "any")
    if isinstance(kind, list):
        return " or ".join(kind)
    return str(kind)


def rules_of(node: Mapping[str, Any]) -> list[str]:
    """The constraints of one property, in words a reader can check a value against."""
    rules: list[str] = []
    if "enum" in node:
        rules.append("one of " + ", ".join(code(v) for v in node["enum"]))
    if "const" in node:
        rules.append("exactly " + code(node["const"]))
    low, high = node.get("minimum"), node.get("maximum")
    low_open, high_open = node.get("exclusiveMinimum"), node.get("exclusiveMaximum")
    if low is not None:
        rules.append(f"≥ {low}")
    if low_open is not None:
        rules.append(f"> {low_open}")
    if high is not None:
        rules.append(f"≤ {high}")
    if high_open is not None:
        rules.append(f"< {high_open}")
    short, long = node.get("minLength"), node.get("maxLength")
    if short is not None and long is not None:
        rules.append(f"{short} to {long} characters")
    elif long is not None:
        rules.append(f"at most {long} characters")
    elif short is not None:
        rules.append(f"at least {short} characters")
    if "minItems" in node:
        rules.append(f"at least {node['minItems']} item{'s' if node['minItems'] != 1 else ''}")
    if "maxItems" in node:
        rules.append(f"at most {node['maxItems']} items")
    if "format" in node:
        rules.append(f"format {node['format']}")
    if "pattern" in node:
        rules.append("pattern " + code(node["pattern"]))
    if "default" in node:
        rules.append("default " + code(node["default"]))
    if "examples" in node:
        rules.append("e.g. " + ", ".join(code(v) for v in node["examples"]))
    return rules


def properties_table(schema: Mapping[str, Any]) -> list[str]:
    required = set(schema.get("required", []))
    lines = [
        "| property | type | required | rules | description |",
        "|---|---|---|---|---|",
    ]
    for name, node in schema.get("properties", {}).items():
        lines.append(
            "| "
            + " | ".join(
                [
                    f"`{name}`",
                    type_of(node),
                    "yes" if name in required else "no",
                    cell("; ".join(rules_of(node))) or " ",
                    cell(node.get("description", "")),
                ]
            )
            + " |"
        )
    if schema.get("additionalProperties") is False:
        lines += ["", "Any other property is rejected."]
    return lines


def schema_section(heading: str, relative: str, schema: Mapping[str, Any]) -> list[str]:
    return [
        f"### {heading}",
        "",
        f"`{relative}`: {schema.get('title', '')}.",
        "",
        prose(schema.get("description", "")),
        "",
        *properties_table(schema),
        "",
    ]


def payload_schemas(schemas: Path) -> list[tuple[str, Path, dict[str, Any]]]:
    found = []
    for path in sorted((schemas / "events").glob("*.schema.json")):
        found.append((path.name.removesuffix(".schema.json"), path, load(path)))
    return found


def render(schemas: Path = SCHEMAS) -> str:
    """The generated section, markers included."""
    event = load(schemas / "event.schema.json")
    batch = load(schemas / "batch.schema.json")
    convert = load(schemas / "convert.schema.json")
    payloads = payload_schemas(schemas)
    pattern = event["properties"]["event_type"]["pattern"]
    lines = [
        BEGIN,
        "",
        "### Event types",
        "",
        f"An `event_type` is lower snake case (pattern `{pattern}`). The types below have a "
        "payload schema: their `value` must match it. Any other well-formed type is accepted "
        "with any JSON object as `value`.",
        "",
        "| event_type | payload schema | required in `value` | what it records |",
        "|---|---|---|---|",
    ]
    for name, path, schema in payloads:
        relative = path.relative_to(schemas.parent).as_posix()
        required = ", ".join(f"`{r}`" for r in schema.get("required", [])) or "none"
        lines.append(
            f"| `{name}` | [{relative}](../{relative}) | {required} | "
            f"{cell(first_sentence(schema.get('description', '')))} |"
        )
    lines.append("")
    lines += schema_section("The batch (body of batch_import)", "schemas/batch.schema.json", batch)
    lines += schema_section("One event", "schemas/event.schema.json", event)
    lines += schema_section(
        "The conversion request (body of convert_timestamps)",
        "schemas/convert.schema.json",
        convert,
    )
    for name, path, schema in payloads:
        relative = path.relative_to(schemas.parent).as_posix()
        lines += schema_section(f"Payload of `{name}`", relative, schema)
    lines.append(END)
    return "\n".join(lines)


def replace_section(document: str, section: str) -> str:
    start, stop = document.find(BEGIN), document.find(END)
    if start < 0 or stop < start:
        raise SystemExit(f"{DOC.name}: the markers {BEGIN!r} and {END!r} are missing")
    return document[:start] + section + document[stop + len(END) :]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="only report whether it is stale")
    parser.add_argument("--doc", type=Path, default=DOC, help="the document to write")
    parser.add_argument("--schemas", type=Path, default=SCHEMAS, help="the schemas directory")
    args = parser.parse_args(argv)
    current = args.doc.read_text(encoding="utf-8")
    wanted = replace_section(current, render(args.schemas))
    if args.check:
        if wanted != current:
            sys.stdout.writelines(
                difflib.unified_diff(
                    current.splitlines(keepends=True),
                    wanted.splitlines(keepends=True),
                    str(args.doc),
                    "generated",
                )
            )
            print(f"\n{args.doc.name} is stale: run scripts/gen-api-reference.py", file=sys.stderr)
            return 1
        return 0
    if wanted != current:
        args.doc.write_text(wanted, encoding="utf-8")
        print(f"updated {args.doc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
