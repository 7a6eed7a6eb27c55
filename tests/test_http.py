"""The HTTP contract of the three functions, through the real functions-framework app, writing
into the local Supabase-shaped database through the direct sink."""

from __future__ import annotations

import gzip
import json
import uuid
from typing import Any

import pytest

from localdb.cluster import free_port
from tests.conftest import (
    ANA,
    BEN,
    ClientFactory,
    Database,
    auth,
    event,
    json_body,
    stored,
    token,
)


def test_batch_is_stored_in_utc_and_answered_with_counts(
    db: Database, make_client: ClientFactory
) -> None:
    client = make_client("batch_import")
    response = client.post(
        "/",
        json={
            "events": [
                event(),
                event(
                    user_id=BEN,
                    event_type="steps_import",
                    timestamp="2025-06-01T23:00:00Z",
                    timezone=None,
                    value={"steps": 8421},
                ),
            ]
        },
        headers=auth(),
    )
    assert response.status_code == 200, response.json
    body = json_body(response)
    assert body["inserted"] == 2
    assert body["duplicates"] == 0
    assert body["rejected"] == []
    assert response.headers["X-Request-Id"] == body["request_id"]
    rows = stored(db)
    assert [(r[0], r[1].isoformat(), r[2]) for r in rows] == [
        (ANA, "2025-06-01T11:30:00+00:00", "app_open"),
        (BEN, "2025-06-01T23:00:00+00:00", "steps_import"),
    ]


def test_same_batch_twice_is_stored_once(db: Database, make_client: ClientFactory) -> None:
    client = make_client("batch_import")
    batch = [event(), event(event_id=str(uuid.uuid4()), timestamp="2025-06-01T08:00:00")]
    first = client.post("/", json=batch, headers=auth())
    second = client.post("/", json=batch, headers=auth())
    assert (json_body(first)["inserted"], json_body(first)["duplicates"]) == (2, 0)
    assert (json_body(second)["inserted"], json_body(second)["duplicates"]) == (0, 2)
    assert len(stored(db)) == 2


def test_partial_mode_stores_the_valid_and_reports_every_problem(
    db: Database, make_client: ClientFactory
) -> None:
    client = make_client("batch_import")
    batch = {
        "events": [
            event(),
            event(timestamp="2024-03-10T02:30:00", event_type="App Open"),
            event(user_id="00000000-0000-4000-8000-000000000000", timestamp="2025-06-01T09:00:00"),
        ]
    }
    response = client.post("/", json=batch, headers=auth())
    assert response.status_code == 200
    body = json_body(response)
    assert body["inserted"] == 1
    rejected = {r["index"]: {e["path"] for e in r["errors"]} for r in body["rejected"]}
    assert rejected == {1: {"/timestamp", "/event_type"}, 2: {"/user_id"}}
    assert len(stored(db)) == 1


def test_atomic_mode_writes_nothing_when_one_event_is_bad(
    db: Database, make_client: ClientFactory
) -> None:
    client = make_client("batch_import")
    batch = {"mode": "atomic", "events": [event(), event(timestamp="not a time")]}
    response = client.post("/", json=batch, headers=auth())
    assert response.status_code == 422
    assert json_body(response)["inserted"] == 0
    assert [r["index"] for r in json_body(response)["rejected"]] == [1]
    assert stored(db) == []


def test_every_event_rejected_is_422(db: Database, make_client: ClientFactory) -> None:
    client = make_client("batch_import")
    response = client.post("/", json=[event(user_id="not-a-uuid")], headers=auth())
    assert response.status_code == 422
    assert json_body(response)["rejected"][0]["errors"][0]["path"] == "/user_id"


def test_gzip_body_is_accepted(db: Database, make_client: ClientFactory) -> None:
    client = make_client("batch_import")
    data = gzip.compress(json.dumps([event()]).encode())
    response = client.post(
        "/",
        data=data,
        headers={**auth(), "Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert response.status_code == 200, response.json
    assert json_body(response)["inserted"] == 1


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"data": b"{not json", "content_type": "application/json"}, 400, "malformed_request"),
        ({"json": {"events": []}}, 400, "malformed_request"),
        ({"json": {"events": [{}], "mode": "sometimes"}}, 400, "malformed_request"),
        ({"data": b"[1, NaN]", "content_type": "application/json"}, 400, "malformed_request"),
        (
            {"data": b'{"events": [], "events": []}', "content_type": "application/json"},
            400,
            "malformed_request",
        ),
        ({"data": b"\xff\xfe{}", "content_type": "application/json"}, 400, "malformed_request"),
        (
            {"data": b"[" * 100000 + b"]" * 100000, "content_type": "application/json"},
            400,
            "malformed_request",
        ),
        ({"data": b"events", "content_type": "text/plain"}, 415, "unsupported_media_type"),
        (
            {
                "data": b"[]",
                "content_type": "application/json",
                "headers": {"Content-Encoding": "br"},
            },
            415,
            "unsupported_media_type",
        ),
        (
            {
                "data": b"not gzip",
                "content_type": "application/json",
                "headers": {"Content-Encoding": "gzip"},
            },
            400,
            "malformed_request",
        ),
    ],
    ids=[
        "bad-json",
        "empty-events",
        "bad-mode",
        "nan",
        "duplicate-keys",
        "bad-utf8",
        "deep-nesting",
        "text-plain",
        "brotli",
        "bad-gzip",
    ],
)
def test_bad_requests_get_their_status_and_a_json_error(
    make_client: ClientFactory, kwargs: dict[str, Any], status: int, code: str
) -> None:
    client = make_client("batch_import")
    headers = {**auth(), **kwargs.pop("headers", {})}
    response = client.post("/", headers=headers, **kwargs)
    assert response.status_code == status
    body = json_body(response)
    assert body["error"] == code
    assert body["message"]
    assert body["request_id"] == response.headers["X-Request-Id"]


def test_wrong_method_is_405_with_allow(make_client: ClientFactory) -> None:
    response = make_client("batch_import").get("/", headers=auth())
    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"


def test_limits_answer_413(make_client: ClientFactory) -> None:
    client = make_client(
        "batch_import", MAX_BATCH_EVENTS="2", MAX_BODY_BYTES="4096", MAX_EVENT_BYTES="1024"
    )
    too_many = client.post("/", json=[event(), event(), event()], headers=auth())
    assert too_many.status_code == 413
    assert "limit is 2" in json_body(too_many)["message"]
    too_big = client.post("/", json=[event(value={"note": "x" * 5000})], headers=auth())
    assert too_big.status_code == 413
    bomb = gzip.compress(b"[" + b" " * 10_000_000 + b"]")
    exploded = client.post(
        "/",
        data=bomb,
        headers={**auth(), "Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert exploded.status_code == 413
    # Refused before decompressing when the compressed body alone is over the limit.
    message = json_body(exploded)["message"]
    assert "decompresses" in message or "compressed" in message


def test_an_oversized_event_is_rejected_not_the_batch(
    db: Database, make_client: ClientFactory
) -> None:
    client = make_client("batch_import", MAX_EVENT_BYTES="512")
    response = client.post(
        "/",
        json=[event(), event(value={"note": "y" * 600}, timestamp="2025-06-01T09:00:00")],
        headers=auth(),
    )
    assert response.status_code == 200
    body = json_body(response)
    assert body["inserted"] == 1
    assert body["rejected"][0]["index"] == 1
    assert "limit of 512 bytes" in body["rejected"][0]["errors"][0]["message"]


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({}, 401, "missing_credentials"),
        ({"Authorization": "Bearer not.a.jwt"}, 401, "malformed"),
        (
            {
                "Authorization": f"Bearer {token(secret='another-secret-of-at-least-32-characters!')}"
            },
            401,
            "bad_signature",
        ),
        ({"Authorization": f"Bearer {token(exp_in=-3600)}"}, 401, "expired"),
        ({"Authorization": f"Bearer {token('authenticated')}"}, 403, "not_service_role"),
    ],
    ids=["none", "malformed", "bad-signature", "expired", "authenticated-role"],
)
def test_credentials_are_checked_before_anything_else(
    db: Database, make_client: ClientFactory, headers: dict[str, str], status: int, code: str
) -> None:
    response = make_client("batch_import").post("/", json=[event()], headers=headers)
    assert response.status_code == status
    assert json_body(response)["error"] == code
    assert stored(db) == []


def test_store_unavailable_is_503_with_retry_after(make_client: ClientFactory) -> None:
    client = make_client(
        "batch_import", DATABASE_URL=f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    )
    response = client.post("/", json=[event()], headers=auth())
    assert response.status_code == 503
    assert json_body(response)["error"] == "store_unavailable"
    assert int(response.headers["Retry-After"]) > 0


def test_caller_request_id_is_echoed(make_client: ClientFactory) -> None:
    response = make_client("batch_import").post(
        "/", json=[event()], headers={**auth(), "X-Request-Id": "wearables-sync-000123"}
    )
    assert response.headers["X-Request-Id"] == "wearables-sync-000123"
    assert json_body(response)["request_id"] == "wearables-sync-000123"


def test_convert_timestamps_batch(make_client: ClientFactory) -> None:
    client = make_client("convert_timestamps")
    response = client.post(
        "/",
        json={
            "timestamps": [
                {"timestamp": "2024-12-01T08:30:00", "timezone": "Europe/Berlin"},
                {"timestamp": "2024-03-10T02:30:00", "timezone": "America/New_York"},
                {"timestamp": "2024-12-01T13:15:00"},
                {"timestamp": "2024-12-01T07:30:00Z"},
                {"timestamp": "2024-12-01T08:00:00", "timezone": "Mars/Olympus"},
            ],
            "default_timezone": "Asia/Kathmandu",
        },
        headers=auth(),
    )
    assert response.status_code == 200
    results = json_body(response)["results"]
    assert results[0] == {"index": 0, "utc": "2024-12-01T07:30:00Z"}
    assert results[1]["error"] == "nonexistent_local_time"
    assert results[2] == {"index": 2, "utc": "2024-12-01T07:30:00Z"}
    assert results[3] == {"index": 3, "utc": "2024-12-01T07:30:00Z"}
    assert results[4]["error"] == "unknown_timezone"


def test_convert_one_timestamp_with_get(make_client: ClientFactory) -> None:
    client = make_client("convert_timestamps")
    ok = client.get("/?timestamp=2024-11-03T01:30:00-04:00", headers=auth())
    assert json_body(ok)["utc"] == "2024-11-03T05:30:00Z"
    ambiguous = client.get(
        "/?timestamp=2024-11-03T01:30:00&timezone=America/New_York", headers=auth()
    )
    assert ambiguous.status_code == 422
    assert json_body(ambiguous)["error"] == "ambiguous_local_time"
    missing = client.get("/", headers=auth())
    assert missing.status_code == 400
    unauthenticated = client.get("/?timestamp=2024-11-03T01:30:00Z")
    assert unauthenticated.status_code == 401


def test_verify_service_jwt(make_client: ClientFactory) -> None:
    client = make_client("verify_service_jwt")
    valid = client.get("/", headers=auth())
    assert valid.status_code == 200
    body = json_body(valid)
    assert body["valid"] is True
    assert body["key_type"] == "legacy_jwt"
    assert body["expires_at"].endswith("Z")
    in_body = client.post("/", json={"token": token()})
    assert in_body.status_code == 200
    expired = client.get("/", headers={"Authorization": f"Bearer {token(exp_in=-600)}"})
    assert (expired.status_code, json_body(expired)["valid"], json_body(expired)["error"]) == (
        401,
        False,
        "expired",
    )
    user = client.get("/", headers=auth("authenticated"))
    assert (user.status_code, json_body(user)["error"], json_body(user)["role"]) == (
        403,
        "not_service_role",
        "authenticated",
    )
