"""Hostile input by hand, through the real functions-framework app and the real database:
whatever is sent, the answer is a documented 4xx with the contract's body or a per-event
rejection, never a 5xx; what is stored is exactly what was valid."""

from __future__ import annotations

import gzip
import io
import json
import os
import tracemalloc
from typing import Any

import pytest
from flask.testing import FlaskClient

from functions.http import compressed_ceiling
from tests import openapi_contract as contract
from tests.conftest import (
    ANA,
    BEN,
    ClientFactory,
    Database,
    auth,
    event,
    json_body,
    stored,
)


def post(client: FlaskClient, body: bytes | str, **headers: str) -> contract.Answer:
    """POST raw bytes as JSON to batch_import; the answer, checked against openapi.yaml."""
    data = body.encode("utf-8", errors="surrogatepass") if isinstance(body, str) else body
    response = client.post(
        "/", data=data, content_type="application/json", headers={**auth(), **headers}
    )
    answer = contract.from_flask(response)
    assert answer.status < 500, answer.body[:300]
    assert contract.contract_problems(answer, "/batch_import", "post") == []
    return answer


def values_stored(db: Database) -> list[Any]:
    with db.connect() as conn:
        return [
            row[0]
            for row in conn.execute(
                "select value from public.engagement_events where timestamp >= '2025-01-01'"
                " order by timestamp"
            )
        ]


def table_count(db: Database) -> int:
    with db.connect() as conn:
        row = conn.execute("select count(*) from public.engagement_events").fetchone()
    assert row is not None
    return int(row[0])


GOOD = event(timestamp="2025-06-01T07:30:00Z", timezone=None, event_type="custom_x", value={})


def with_field(name: str, json_text: str, base: dict[str, Any] | None = None) -> str:
    """An event as JSON text whose field `name` is the raw JSON `json_text` (which may hold
    escapes, such as lone surrogates, that Python cannot encode)."""
    fields = {k: json.dumps(v) for k, v in (base or GOOD).items() if k != name}
    fields[name] = json_text
    return "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in fields.items()) + "}"


# --- structure ----------------------------------------------------------------------------------


def test_json_nested_100k_levels_is_400(make_client: ClientFactory) -> None:
    client = make_client("batch_import")
    for body in (b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 100_000 + b"1" + b"}" * 100_000):
        answer = post(client, body)
        assert answer.status == 400
        assert answer.json["message"] == "the body is nested too deeply"


@pytest.mark.parametrize("depth", [100, 900, 5_000])
def test_a_deeply_nested_value_is_stored_or_refused_never_a_5xx(
    db: Database, make_client: ClientFactory, depth: int
) -> None:
    client = make_client("batch_import")
    value = '{"a":' + "[" * depth + "]" * depth + "}"
    answer = post(client, "[" + with_field("value", value) + "]")
    if answer.status == 200:
        assert answer.json["inserted"] == 1
        nested = values_stored(db)[0]["a"]
        levels = 0
        while nested:
            nested, levels = nested[0], levels + 1
        assert levels == depth - 1
    else:
        assert answer.status == 400
        assert values_stored(db) == []
    assert (answer.status == 200) == (depth <= 900)


def test_duplicate_keys_anywhere_are_400(make_client: ClientFactory) -> None:
    client = make_client("batch_import")
    inner = GOOD | {"value": {}}
    duplicated = json.dumps([inner]).replace('"value": {}', '"value": {"k": 1, "k": 2}')
    for body in (duplicated, json.dumps([inner])[:-2] + ', "user_id": "' + BEN + '"}]'):
        answer = post(client, body)
        assert answer.status == 400
        assert "repeats a key" in answer.json["message"]


def test_numbers_json_or_a_double_cannot_hold_are_400(
    db: Database, make_client: ClientFactory
) -> None:
    client = make_client("batch_import")
    for number in ["NaN", "Infinity", "-Infinity", "1e400", "-1e999", "9" * 5000]:
        answer = post(client, "[" + with_field("value", '{"n":' + number + "}") + "]")
        assert answer.status == 400, number
        assert answer.json["error"] == "malformed_request"
        assert "99999" not in answer.json["message"]
    assert table_count(db) == 5000  # the seed alone


# --- bytes and characters -----------------------------------------------------------------------


NOT_UTF8_JSON = [
    b"\xff\xfe[]",
    b'[{"a": "\xc0\xaf"}]',  # overlong encoding of /
    b'[{"a": "\xed\xa0\x80"}]',  # a surrogate encoded as UTF-8
    b'[{"a": "\xe2\x82"}]',  # truncated sequence
    b"\xef\xbb\xbf[]",  # a byte order mark
    b'[{"a": "x\x00y"}]',  # a raw NUL byte inside a string
    b"[\x00]",
]


def test_bytes_that_are_not_utf8_json_are_400(make_client: ClientFactory) -> None:
    client = make_client("batch_import")
    for raw in NOT_UTF8_JSON:
        answer = post(client, raw)
        assert answer.status == 400, raw
        assert answer.json["error"] == "malformed_request"


STRING_FIELDS = ["user_id", "event_type", "timestamp", "timezone", "event_id"]


@pytest.mark.parametrize("escape", ["\\ud800", "\\udfff", "a\\u0000b", "\\u0000"])
def test_lone_surrogates_and_nul_are_per_event_rejections(
    db: Database, make_client: ClientFactory, escape: str
) -> None:
    """jsonb refuses \\u0000 and lone surrogates: in any field, in a key of value or of the
    event, the event alone is rejected and the rest of the batch is stored."""
    bad_events = [with_field(name, f'"{escape}"') for name in STRING_FIELDS]
    bad_events += [
        with_field("value", f'{{"note": "{escape}"}}'),
        with_field("value", f'{{"{escape}": 1}}'),
        with_field("value", f'{{"deep": [{{"x": ["{escape}"]}}]}}'),
        with_field(
            "value",
            f'{{"platform": "ios", "os_version": "{escape}"}}',
            base=GOOD | {"event_type": "app_open"},
        ),
        with_field(escape, "1"),
    ]
    good = [
        json.dumps(event(timestamp=f"2025-06-01T08:0{i}:00Z", timezone=None, event_type="custom_x"))
        for i in range(2)
    ]
    body = "[" + good[0] + "," + ",".join(bad_events) + "," + good[1] + "]"
    answer = post(make_client("batch_import"), body)
    assert answer.status == 200
    assert answer.json["inserted"] == 2
    assert [r["index"] for r in answer.json["rejected"]] == list(range(1, len(bad_events) + 1))
    assert len(stored(db)) == 2


def test_a_surrogate_outside_the_events_is_400(make_client: ClientFactory) -> None:
    body = '{"events": [' + json.dumps(GOOD) + '], "mode": "\\ud800"}'
    answer = post(make_client("batch_import"), body)
    assert answer.status == 400


# --- sizes --------------------------------------------------------------------------------------


def test_huge_strings_within_and_over_the_limits(db: Database, make_client: ClientFactory) -> None:
    client = make_client(
        "batch_import", MAX_EVENT_BYTES=str(64 * 1024), MAX_BODY_BYTES=str(1024 * 1024)
    )
    within = GOOD | {"value": {"note": "w" * 60_000}}
    over = GOOD | {"value": {"note": "o" * 70_000}, "timestamp": "2025-06-01T07:31:00Z"}
    answer = post(client, json.dumps([within, over]))
    assert answer.status == 200
    assert answer.json["inserted"] == 1
    assert answer.json["rejected"][0]["index"] == 1
    assert "larger than the limit" in answer.json["rejected"][0]["errors"][0]["message"]
    assert values_stored(db) == [{"note": "w" * 60_000}]
    # Huge strings in the checked fields: rejected, and never repeated in the answer.
    for name in ("user_id", "event_type", "timestamp", "timezone", "event_id"):
        answer = post(client, json.dumps([GOOD | {name: "Z" * 50_000}]))
        assert answer.status == 422
        assert len(answer.body) < 2_000
    too_big = post(client, json.dumps([GOOD | {"value": {"note": "b" * 1_100_000}}]))
    assert too_big.status == 413


def test_gzip_bombs_are_stopped_at_the_limit(db: Database, make_client: ClientFactory) -> None:
    limit = 256 * 1024
    client = make_client("batch_import", MAX_BODY_BYTES=str(limit), MAX_EVENT_BYTES="65536")
    gz = {"Content-Encoding": "gzip"}
    bomb = gzip.compress(b"[" + b" " * (100 * 1024 * 1024) + b"]", compresslevel=9)
    assert len(bomb) < limit  # 100 MiB of JSON in a body that passes the size check
    answer = post(client, bomb, **gz)
    assert answer.status == 413
    assert "decompresses to more than" in answer.json["message"]
    # Just under the limit decompressed: accepted.
    padding = limit - len(json.dumps([GOOD])) - 10
    fits = gzip.compress(json.dumps([GOOD]).encode() + b" " * padding)
    assert post(client, fits, **gz).status == 200
    # Data after the gzip stream, and a stream cut short, are malformed.
    assert post(client, fits + b"junk", **gz).status == 400
    assert post(client, fits[:-10], **gz).status == 400


def test_a_refused_body_is_not_kept_in_memory(make_client: ClientFactory) -> None:
    """Incompressible data sent as gzip, with no Content-Length: the function stops reading
    it into memory just past the compressed ceiling, and drops the rest (functions-framework
    would otherwise buffer all of it after the answer)."""
    limit = 64 * 1024
    client = make_client("batch_import", MAX_BODY_BYTES=str(limit), MAX_EVENT_BYTES="1024")
    stream = io.BytesIO(os.urandom(16 * 1024 * 1024))
    tracemalloc.start()
    try:
        response = client.post(
            "/",
            headers={**auth(), "Content-Type": "application/json", "Content-Encoding": "gzip"},
            environ_overrides={"wsgi.input": stream, "wsgi.input_terminated": True},
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    answer = contract.from_flask(response)
    assert answer.status == 413
    assert contract.contract_problems(answer, "/batch_import", "post") == []
    assert f"limit of {compressed_ceiling(limit)} bytes" in answer.json["message"]
    assert peak < 4 * 1024 * 1024, f"{peak} bytes held for a 16 MiB body"
    assert stream.tell() == 16 * 1024 * 1024  # read to the end, so the connection stays usable
    declared = client.post(
        "/",
        data=b"\x1f\x8b" + b"\x00" * 300_000,
        headers={**auth(), "Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert declared.status_code == 413
    assert "compressed body" in json_body(declared)["message"]


# --- metacharacters -----------------------------------------------------------------------------

META = ["'; drop table public.engagement_events; --", "~0", "~1", "/", "a/b~c", '"\\', "$$", "%s"]


def test_sql_and_pointer_metacharacters_are_data(db: Database, make_client: ClientFactory) -> None:
    """In every string field, in keys of value and of the event: the valid event is stored
    byte for byte, the others are rejected at the right JSON pointer, the table is intact."""
    client = make_client("batch_import")
    kept_values = []
    for minute, text in enumerate(META):
        value = {text: text, "nested": {text: [text]}}
        kept = GOOD | {"value": value, "timestamp": f"2025-06-01T09:{minute:02d}:00Z"}
        events = [kept] + [GOOD | {name: text} for name in STRING_FIELDS] + [GOOD | {text: 1}]
        known = GOOD | {"event_type": "app_open", "value": {"platform": "ios", text: 1}}
        events.append(known)
        answer = post(client, json.dumps({"events": events, "default_timezone": "UTC"}))
        assert answer.status == 200, text
        assert answer.json["inserted"] == 1
        rejected = {r["index"]: [e["path"] for e in r["errors"]] for r in answer.json["rejected"]}
        expected_paths = {i + 1: [f"/{name}"] for i, name in enumerate(STRING_FIELDS)}
        expected_paths[len(STRING_FIELDS) + 1] = [""]
        expected_paths[len(STRING_FIELDS) + 2] = ["/value"]
        assert rejected == expected_paths, text
        kept_values.append(value)
    assert values_stored(db) == kept_values
    assert table_count(db) == 5000 + len(META)


# --- one bad event among 10,000 -----------------------------------------------------------------


def _ten_thousand(bad_index: int) -> list[dict[str, Any]]:
    events = [
        {
            "user_id": ANA if i % 2 else BEN,
            "event_type": "steps_import",
            "timestamp": f"2025-03-{1 + i // 1440:02d}T{(i // 60) % 24:02d}:{i % 60:02d}:00Z",
            "value": {"steps": i},
        }
        for i in range(10_000)
    ]
    events[bad_index] = events[bad_index] | {"value": {"steps": -1}}
    return events


def test_ten_thousand_events_one_bad_partial(db: Database, make_client: ClientFactory) -> None:
    answer = post(make_client("batch_import"), json.dumps(_ten_thousand(7_321)))
    assert answer.status == 200
    assert answer.json["inserted"] == 9_999
    assert answer.json["rejected"] == [
        {
            "index": 7_321,
            "event_id": None,
            "errors": [{"path": "/value/steps", "message": "/value/steps must be at least 0"}],
        }
    ]
    assert table_count(db) == 5_000 + 9_999


def test_ten_thousand_events_one_bad_atomic(db: Database, make_client: ClientFactory) -> None:
    body = json.dumps({"mode": "atomic", "events": _ten_thousand(9_999)})
    answer = post(make_client("batch_import"), body)
    assert answer.status == 422
    assert (answer.json["inserted"], answer.json["duplicates"]) == (0, 0)
    assert [r["index"] for r in answer.json["rejected"]] == [9_999]
    assert table_count(db) == 5_000


# --- the other two functions --------------------------------------------------------------------


HOSTILE_CONVERT_BODIES = [
    '{"timestamps": [{"timestamp": "\\ud800", "timezone": "\\udfff"}]}',
    '{"timestamps": [{"timestamp": "2024-01-01T00:00:00\\u0000", "timezone": "UTC"}]}',
    '{"timestamps": [{"timestamp": "2024-01-01T00:00:00"}], "default_timezone": "\\ud800"}',
    '{"timestamps": [' + ",".join(['{"timestamp": "' + "9" * 10_000 + '"}'] * 50) + "]}",
    '{"timestamps": [' + "[" * 5_000 + "]" * 5_000 + "]}",
    '{"timestamps": [{"timestamp": 1e400}]}',
]


def test_convert_timestamps_survives_hostile_bodies(make_client: ClientFactory) -> None:
    client = make_client("convert_timestamps")
    for body in HOSTILE_CONVERT_BODIES:
        response = client.post(
            "/",
            data=body.encode("utf-8", "surrogatepass"),
            content_type="application/json",
            headers=auth(),
        )
        answer = contract.from_flask(response)
        assert answer.status in (200, 400), body[:80]
        assert contract.contract_problems(answer, "/convert_timestamps", "post") == []
        if answer.status == 200:
            assert all("error" in result for result in answer.json["results"])


HOSTILE_TOKENS = [
    '"eyJ\\ud800.a.b"',
    '"a.b.\\ud800"',
    '"sb_secret_\\udfff"',
    '"\\u0000"',
    '"' + "A" * 100_000 + '"',
]


def test_verify_service_jwt_survives_hostile_tokens(make_client: ClientFactory) -> None:
    client = make_client("verify_service_jwt")
    for token in HOSTILE_TOKENS:
        response = client.post(
            "/",
            data=('{"token": ' + token + "}").encode("utf-8", "surrogatepass"),
            content_type="application/json",
        )
        answer = contract.from_flask(response)
        assert answer.status in (401, 413), token[:40]
        assert contract.contract_problems(answer, "/verify_service_jwt", "post") == []
