"""batch_import's rate limit: whom it counts, and the 429 when a caller is over it.

The counting itself happens in the database (``take_engagement_rate_limit``, through the
sink), so every instance of the function shares one count per caller and minute.
"""

from __future__ import annotations

import hashlib

from functions.config import Settings
from functions.errors import RateLimited
from functions.service_auth import Credential
from functions.sinks import Sink


def caller_name(key_type: str, identity: str) -> str:
    """The rate limit's name for a caller: the key type and a hash of who it is."""
    digest = hashlib.sha256(f"{key_type}:{identity}".encode()).hexdigest()
    return f"{key_type}:{digest[:32]}"


def caller_of(credential: Credential, presented: str) -> str:
    """Whom the rate limit counts for a verified ``credential`` (``presented`` is the text the
    request presented): one caller per secret key, per JWT subject, and one for all
    service-role JWTs without a subject. A hash, so the database never sees a credential."""
    if credential.key_type == "secret_key":
        identity = presented
    else:
        identity = credential.subject or "service_role"
    return caller_name(credential.key_type, identity)


def take(sink: Sink, settings: Settings, caller: str, events: int, deadline: float) -> None:
    """Count a request of ``events`` events for ``caller``; RateLimited when it is over either
    limit of ``settings`` (none is checked when both are 0)."""
    if not (settings.rate_limit_requests_per_minute or settings.rate_limit_events_per_minute):
        return
    wait = sink.take_rate_limit(
        caller,
        events,
        requests_per_minute=settings.rate_limit_requests_per_minute,
        events_per_minute=settings.rate_limit_events_per_minute,
        deadline=deadline,
    )
    if wait > 0:
        limits = [
            f"{limit} {unit}"
            for limit, unit in (
                (settings.rate_limit_requests_per_minute, "requests"),
                (settings.rate_limit_events_per_minute, "events"),
            )
            if limit
        ]
        raise RateLimited(
            f"this caller is over its rate limit of {' or '.join(limits)} per minute; "
            f"retry in {wait} s",
            retry_after=wait,
        )
