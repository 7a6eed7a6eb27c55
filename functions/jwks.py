"""The project's signing keys (JWKS), for verifying its asymmetric JWTs
(``functions.service_auth``): fetched on first need, kept for ``ttl_seconds``, fetched again
when a token names a key id the set lacks, but at most once every
``refresh_interval_seconds``, so a rotated key works at once and tokens naming unknown keys
cannot make every request fetch. Only ES256 and RS256 keys whose type matches are kept; the
URL must be https (http only for localhost).
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import logging
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import jwt

from functions.errors import AuthError, ConfigError

logger = logging.getLogger(__name__)

MAX_JWKS_BYTES: Final = 1_048_576
"""A JWKS document larger than this is treated as a failed fetch."""

# The asymmetric algorithms accepted and the JWK (kty, crv) that each one requires.
JWKS_ALGORITHMS: Final[Mapping[str, tuple[str, str | None]]] = {
    "ES256": ("EC", "P-256"),
    "RS256": ("RSA", None),
}


def fetch_with_urllib(url: str, timeout: float) -> bytes:
    """GET ``url`` and return the body: the default JWKS fetcher.

    Raises OSError (``URLError``, ``HTTPError`` for non-2xx answers, timeouts) or ValueError
    (body over :data:`MAX_JWKS_BYTES`), which the authenticator reports as ``jwks_unavailable``.
    """
    # S310 warns of file: and custom schemes; the URL was checked to be http(s) at construction.
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        body: bytes = response.read(MAX_JWKS_BYTES + 1)
    if len(body) > MAX_JWKS_BYTES:
        raise ValueError(f"the JWKS document is larger than {MAX_JWKS_BYTES} bytes")
    return body


@dataclass(frozen=True)
class KeySet:
    keys: Mapping[tuple[str, str], jwt.PyJWK]
    """Verification keys by (kid, alg)."""
    fetched_at: float


class JwksCache:
    """The project's JWKS, fetched lazily, shared by threads, refreshed under one lock.

    Lookups of a known kid in a fresh set read an immutable snapshot without the lock. A
    fetch happens with the lock held, so concurrent requests that need one wait for it instead
    of fetching too; the wait is bounded (twice the fetch timeout) and a request that cannot
    get the lock in that time is answered ``jwks_unavailable``.
    """

    def __init__(
        self,
        *,
        url: str,
        fetch: Callable[[str, float], bytes],
        clock: Callable[[], float],
        ttl_seconds: float,
        refresh_interval_seconds: float,
        timeout_seconds: float,
    ) -> None:
        self._url = url
        self._fetch = fetch
        self._clock = clock
        self._ttl = ttl_seconds
        self._refresh_interval = refresh_interval_seconds
        self._timeout = timeout_seconds
        self._lock = threading.Lock()
        self._keyset: KeySet | None = None
        self._last_attempt_at: float | None = None
        self._last_attempt_failed = False

    def key(self, kid: str, alg: str) -> jwt.PyJWK:
        """The key ``kid`` for ``alg``; raises AuthError ``unknown_key`` or ``jwks_unavailable``."""
        keyset = self._keyset
        if keyset is not None and self._is_fresh(keyset, self._clock()):
            found = keyset.keys.get((kid, alg))
            if found is not None:
                return found
        if not self._lock.acquire(timeout=2 * self._timeout):
            raise AuthError(
                "the project's signing keys (JWKS) are being fetched and did not arrive in time",
                code="jwks_unavailable",
            )
        try:
            return self._key_with_lock_held(kid, alg)
        finally:
            self._lock.release()

    def _is_fresh(self, keyset: KeySet, now: float) -> bool:
        # A clock that went backwards makes the set stale rather than fresh for longer.
        return 0 <= now - keyset.fetched_at < self._ttl

    def _key_with_lock_held(self, kid: str, alg: str) -> jwt.PyJWK:
        now = self._clock()
        keyset = self._keyset  # another thread may have refreshed it while this one waited
        fresh = keyset is not None and self._is_fresh(keyset, now)
        if keyset is not None and fresh:
            found = keyset.keys.get((kid, alg))
            if found is not None:
                return found
        last = self._last_attempt_at
        throttled = last is not None and 0 <= now - last < self._refresh_interval
        if throttled and fresh:
            raise unknown_key(alg)
        if throttled and self._last_attempt_failed:
            raise AuthError(
                "the project's signing keys (JWKS) could not be fetched; the next attempt "
                f"is at most {self._refresh_interval:g} s away",
                code="jwks_unavailable",
            )
        found = self._refresh(now).keys.get((kid, alg))
        if found is None:
            raise unknown_key(alg)
        return found

    def _refresh(self, now: float) -> KeySet:
        self._last_attempt_at = now
        self._last_attempt_failed = True
        try:
            body = self._fetch(self._url, self._timeout)
            keys = _parse_jwks(body)
        except (OSError, ValueError, RecursionError, http.client.HTTPException) as error:
            logger.warning(
                "fetching the JWKS from %s failed: %s: %s", self._url, type(error).__name__, error
            )
            raise AuthError(
                "the project's signing keys (JWKS) could not be fetched", code="jwks_unavailable"
            ) from None
        self._last_attempt_failed = False
        self._keyset = KeySet(keys=keys, fetched_at=now)
        logger.info("fetched the JWKS from %s: %d usable keys", self._url, len(keys))
        return self._keyset


def _parse_jwks(body: bytes) -> dict[tuple[str, str], jwt.PyJWK]:
    """The usable verification keys of a JWKS document; ValueError if it is not one.

    Keys that cannot verify ES256/RS256 signatures (``oct`` secrets, other curves, keys
    declared for another algorithm or for encryption) are left out, so no token can pick them.
    """
    if len(body) > MAX_JWKS_BYTES:
        raise ValueError(f"the JWKS document is larger than {MAX_JWKS_BYTES} bytes")
    document = json.loads(body)  # raises JSONDecodeError (a ValueError) or RecursionError
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ValueError("the JWKS document is not a JSON object with a 'keys' list")
    keys: dict[tuple[str, str], jwt.PyJWK] = {}
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str):
            continue
        alg = _jwk_algorithm(entry)
        if alg is None:
            continue
        try:
            keys[(entry["kid"], alg)] = jwt.PyJWK(entry, algorithm=alg)
        except jwt.PyJWTError as error:
            # PyJWT's message may quote the JWK; its class name is enough to find the problem.
            logger.warning("skipping an unusable %s key in the JWKS: %s", alg, type(error).__name__)
    return keys


def _jwk_algorithm(entry: Mapping[str, Any]) -> str | None:
    """The accepted algorithm this JWK verifies, or None if it verifies none of them."""
    if entry.get("use", "sig") != "sig":
        return None
    key_ops = entry.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        return None
    for alg, (kty, crv) in JWKS_ALGORITHMS.items():
        if entry.get("kty") == kty and entry.get("crv") == crv:
            declared = entry.get("alg", alg)
            return alg if declared == alg else None
    return None


def check_jwks_url(url: str) -> None:
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme == "https" and parsed.hostname:
        return
    if parsed.scheme == "http" and parsed.hostname and _is_loopback(parsed.hostname):
        return
    raise ConfigError(
        "the JWKS URL must be an https URL (http only for localhost, as in a local Supabase stack)"
    )


def _is_loopback(hostname: str) -> bool:
    if hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def unknown_key(alg: str) -> AuthError:
    return AuthError(
        f"the token's key id (kid) names no {alg} key in the project's JWKS",
        code="unknown_key",
    )
