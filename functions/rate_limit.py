"""batch_import's rate limit: whom it counts, and the 429 when a caller is over it.

The counting itself happens in the database (``take_engagement_rate_limit``, through the
sink), so every instance of the function shares one count per caller and minute. A request
with events to store takes it in the write's own round trip (:func:`limit_for`); one without
takes it on its own (:func:`take`).
"""

from __future__ import annotations

import hashlib

from functions.config import Settings
from functions.errors import RateLimited
from functions.service_auth import Credential
from functions.sinks import RateLimit, Sink


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


def limit_for(settings: Settings, caller: str, events: int) -> RateLimit | None:
    """The rate limit of a request of ``events`` events, for the sink to take with the write;
    None when ``settings`` set no limit."""
    if not (settings.rate_limit_requests_per_minute or settings.rate_limit_events_per_minute):
        return None
    return RateLimit(
        caller=caller,
        events=events,
        requests_per_minute=settings.rate_limit_requests_per_minute,
        events_per_minute=settings.rate_limit_events_per_minute,
    )


def take(sink: Sink, settings: Settings, caller: str, events: int, deadline: float) -> None:
    """Count a request of ``events`` events for ``caller``; RateLimited when it is over either
    limit of ``settings`` (none is checked when both are 0)."""
    rate = limit_for(settings, caller, events)
    if rate is None:
        return
    wait = sink.take_rate_limit(
        caller,
        events,
        requests_per_minute=rate.requests_per_minute,
        events_per_minute=rate.events_per_minute,
        deadline=deadline,
    )
    if wait > 0:
        raise refused(settings, wait)


def refused(settings: Settings, wait: int) -> RateLimited:
    """The 429 for a caller over a limit of ``settings``, to retry in ``wait`` seconds."""
    limits = [
        f"{limit} {unit}"
        for limit, unit in (
            (settings.rate_limit_requests_per_minute, "requests"),
            (settings.rate_limit_events_per_minute, "events"),
        )
        if limit
    ]
    return RateLimited(
        f"this caller is over its rate limit of {' or '.join(limits)} per minute; "
        f"retry in {wait} s",
        retry_after=wait,
    )
