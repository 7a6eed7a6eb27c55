"""Service authentication: which credentials may call the functions, and as whom.

Accepted, because these are the three kinds of service credential a Supabase project hands out:

* a legacy JWT (the old ``service_role`` API key or any token Auth signed with the project's JWT
  secret), verified with HS256 and that secret;
* a JWT signed ES256 or RS256 with one of the project's asymmetric signing keys, verified
  against the project's JWKS, which is fetched on first need and cached for at most 10 minutes;
* a secret API key ``sb_secret_...``, compared in constant time with every configured key.

The header's ``alg`` alone decides which key may verify a token: HS256 only the configured
secret, ES256/RS256 only JWKS keys of that algorithm. Everything else (``none``, HS384/HS512,
PS*, EdDSA, ...) is refused, and keys the token names itself (``jwk``, ``jku``, ``x5u``) are
ignored, so no public key is ever used as an HMAC secret. ``exp``/``nbf``/``iat`` are checked
with a leeway of 30 s, as PostgREST does. ``aud`` is not checked: legacy service keys carry
none and user tokens carry ``authenticated``; the ``role`` claim decides, and only
``service_role`` passes :meth:`ServiceAuthenticator.require_service_role`.
Error messages name claims and algorithms, never a token, a key or a secret.

Which header holds the credential (:func:`presented_credential`): ``Authorization: Bearer``,
or ``apikey`` when there is no Authorization header or it carries a Google ID token (Cloud
Scheduler's OIDC token for Cloud Run's IAM check).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

import jwt
from jwt.types import Options

from functions.errors import AuthError, ConfigError, NotServiceRole
from functions.jwks import (
    JWKS_ALGORITHMS,
    JwksCache,
    check_jwks_url,
    fetch_with_urllib,
)

logger = logging.getLogger(__name__)

SERVICE_ROLE: Final = "service_role"
SECRET_KEY_PREFIX: Final = "sb_secret_"  # noqa: S105 - a prefix, not a secret
PUBLISHABLE_KEY_PREFIX: Final = "sb_publishable_"

MAX_CREDENTIAL_CHARS: Final = 16_384
"""Longer credentials are refused before any parsing (tokens Supabase issues are far shorter)."""
MIN_JWT_SECRET_CHARS: Final = 32
"""Supabase refuses JWT secrets shorter than this; a shorter one is a configuration mistake."""

KeyType = Literal["legacy_jwt", "jwks", "secret_key"]

# PyJWT checks only the signature (and the token's shape); the time claims are checked in this
# module against the injected clock, because PyJWT reads the system clock and reports a future
# `nbf` and a future `iat` with the same exception.
_SIGNATURE_ONLY: Final[Options] = {
    "verify_signature": True,
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_aud": False,
    "verify_iss": False,
    "verify_sub": False,
    "verify_jti": False,
}

# PyJWT's exceptions and what they mean to a caller; first match wins, so subclasses come
# before their bases (InvalidSignatureError is a DecodeError, every one is an InvalidTokenError).
_PYJWT_ERRORS: Final[tuple[tuple[type[jwt.PyJWTError], str, str], ...]] = (
    (jwt.InvalidSignatureError, "bad_signature", "the token's signature does not verify"),
    # The two time errors are not raised under _SIGNATURE_ONLY; mapped in case that changes.
    (jwt.ExpiredSignatureError, "expired", "the token has expired"),
    (jwt.ImmatureSignatureError, "not_yet_valid", "the token is not valid yet"),
    (jwt.InvalidAlgorithmError, "unsupported_algorithm", "the token's algorithm is not accepted"),
    (jwt.InvalidKeyError, "not_configured", "the configured key cannot verify this token"),
    (jwt.DecodeError, "malformed", "the JWT is not base64url parts with a JSON header and payload"),
    (jwt.InvalidTokenError, "malformed", "the JWT's header or claims are malformed"),
)


@dataclass(frozen=True)
class Credential:
    """Who a verified credential speaks for."""

    role: str | None
    """The ``role`` claim (``service_role`` for secret keys); None when the token has none."""
    key_type: KeyType
    """How it was verified: JWT secret (HS256), JWKS (ES256/RS256), or secret API key."""
    expires_at: datetime | None
    """The ``exp`` claim as an aware UTC datetime; None for secret keys and tokens without one."""
    subject: str | None
    """The ``sub`` claim, if any."""


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header (scheme case-insensitive).

    Raises AuthError ``missing_credentials`` when there is no header or no token after the
    scheme, ``malformed`` for another scheme or anything after the token.
    """
    if authorization is None or not authorization.strip():
        raise AuthError("no Authorization header was sent", code="missing_credentials")
    parts = authorization.split()
    if parts[0].lower() != "bearer":
        raise AuthError(
            "the Authorization header must use the Bearer scheme: 'Bearer <token>'",
            code="malformed",
        )
    if len(parts) == 1:
        raise AuthError(
            "the Authorization header has no token after 'Bearer'", code="missing_credentials"
        )
    if len(parts) > 2:
        raise AuthError(
            "the Authorization header must be 'Bearer <token>' with nothing after the token",
            code="malformed",
        )
    return parts[1]


GOOGLE_ISSUERS: Final = frozenset({"https://accounts.google.com", "accounts.google.com"})
"""Issuers of the ID tokens Cloud Scheduler (and other Google callers) send."""


def presented_credential(authorization: str | None, apikey: str | None) -> str:
    """The credential a request presents, from its ``Authorization`` and ``apikey`` headers:
    the bearer token (see :func:`bearer_token`), or ``apikey`` (as Supabase clients send
    secret keys) when there is no Authorization header or when it carries a Google ID token.
    Cloud Scheduler puts its OIDC token in Authorization for Cloud Run's IAM check, so its
    Supabase credential travels in ``apikey``."""
    key = (apikey or "").strip()
    if key and (authorization is None or _is_google_id_token(authorization)):
        return key
    return bearer_token(authorization)


def _is_google_id_token(authorization: str) -> bool:
    """Whether the bearer token's (unverified) issuer is Google. It is never used as a
    credential: it only decides that ``apikey`` holds the credential to check."""
    scheme, _, token = authorization.strip().partition(" ")
    segments = token.strip().split(".")
    if scheme.lower() != "bearer" or len(segments) != 3:
        return False
    payload = segments[1] + "=" * (-len(segments[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (ValueError, RecursionError):  # not base64url JSON, so not a Google token either
        return False
    # The payload is the caller's: any JSON type may stand in "iss", and only a string can be
    # one of Google's (a list or an object would not even hash for the set lookup).
    issuer = claims.get("iss") if isinstance(claims, dict) else None
    return isinstance(issuer, str) and issuer in GOOGLE_ISSUERS


class ServiceAuthenticator:
    """Verifies service credentials; one instance per process, shared by concurrent requests.

    Built once at cold start from the configuration; raises ConfigError there for a value
    that could never verify anything (an empty or too short JWT secret, a PEM key given as
    the JWT secret, a secret key without the ``sb_secret_`` prefix, a JWKS URL that is not
    https, http being accepted only for loopback hosts such as a local Supabase stack).

    The JWKS is fetched on the first ES256/RS256 token, kept for ``jwks_ttl_seconds`` and then
    fetched again (an expired set is never used, so a revoked key stops working within the
    TTL). A ``kid`` missing from a fresh set triggers one refresh, because a key may have been
    rotated in since the last fetch. The URL is contacted at most once per
    ``jwks_refresh_interval_seconds`` on behalf of unknown kids or after a failed fetch, so a
    stream of forged kids, or a JWKS endpoint that is down, costs Supabase one request per
    interval and the callers an immediate answer instead of a wait on the timeout each.

    ``fetch_jwks(url, timeout)`` returns the JWKS document's bytes and signals failure with
    OSError, ValueError or ``http.client.HTTPException`` (the default, :func:`fetch_with_urllib`,
    does). ``clock`` returns Unix time in seconds; it times both the claims and the cache.
    """

    def __init__(
        self,
        *,
        jwt_secret: str | None,
        jwks_url: str | None,
        secret_keys: Sequence[str] = (),
        leeway_seconds: int = 30,
        jwks_ttl_seconds: int = 600,
        fetch_jwks: Callable[[str, float], bytes] | None = None,
        clock: Callable[[], float] = time.time,
        jwks_fetch_timeout_seconds: float = 5.0,
        jwks_refresh_interval_seconds: float = 30.0,
    ) -> None:
        if leeway_seconds < 0:
            raise ConfigError("the JWT leeway must not be negative")
        if jwks_ttl_seconds <= 0 or jwks_fetch_timeout_seconds <= 0:
            raise ConfigError("the JWKS TTL and fetch timeout must be positive")
        if jwks_refresh_interval_seconds < 0:
            raise ConfigError("the JWKS refresh interval must not be negative")
        if jwt_secret is not None:
            _check_jwt_secret(jwt_secret)
        if isinstance(secret_keys, str):
            raise ConfigError("secret keys must be given as a sequence of keys, not one string")
        for position, key in enumerate(secret_keys, start=1):
            if not key.startswith(SECRET_KEY_PREFIX) or len(key) == len(SECRET_KEY_PREFIX):
                raise ConfigError(
                    f"secret key #{position} is not a Supabase secret key ({SECRET_KEY_PREFIX}...)"
                )
        self._jwt_secret = jwt_secret
        # Only digests are kept: equal-length inputs make compare_digest's time independent of
        # the key's length, and the keys themselves stay out of this object.
        self._secret_key_digests = tuple(_digest(key) for key in secret_keys)
        self._leeway = leeway_seconds
        self._clock = clock
        self._jwks: JwksCache | None = None
        if jwks_url is not None:
            check_jwks_url(jwks_url)
            self._jwks = JwksCache(
                url=jwks_url,
                fetch=fetch_jwks if fetch_jwks is not None else fetch_with_urllib,
                clock=clock,
                ttl_seconds=jwks_ttl_seconds,
                refresh_interval_seconds=jwks_refresh_interval_seconds,
                timeout_seconds=jwks_fetch_timeout_seconds,
            )

    def identify(self, credential: str) -> Credential:
        """Verify signature, time claims and shape of ``credential``; the role is not checked.

        Raises AuthError with one of the codes listed on it. A publishable key
        (``sb_publishable_...``) raises NotServiceRole with role ``anon``: such keys are public
        by design (they ship inside client apps), so nothing about one can be verified, and
        the only role it ever stands for is ``anon``.
        """
        credential = credential.strip()
        if not credential:
            raise AuthError("no credentials were sent", code="missing_credentials")
        if len(credential) > MAX_CREDENTIAL_CHARS:
            raise AuthError(
                f"the credential is longer than {MAX_CREDENTIAL_CHARS} characters",
                code="malformed",
            )
        if not credential.isascii():
            # JWTs (base64url) and API keys are ASCII; anything else (a lone surrogate from a
            # JSON body included, which no codec can encode) cannot be one.
            raise AuthError(
                "the credential contains characters that no JWT or API key has", code="malformed"
            )
        if credential.startswith(SECRET_KEY_PREFIX):
            return self._identify_secret_key(credential)
        if credential.startswith(PUBLISHABLE_KEY_PREFIX):
            raise NotServiceRole(
                "a publishable key acts as the anon role; service calls need a secret key "
                "(sb_secret_...) or a service_role JWT",
                role="anon",
            )
        return self._identify_jwt(credential)

    def require_service_role(self, credential: str) -> Credential:
        """:meth:`identify`, then refuse any role but ``service_role`` with NotServiceRole."""
        identified = self.identify(credential)
        if identified.role != SERVICE_ROLE:
            if identified.role is None:
                message = "the token has no role claim; service calls need role service_role"
            else:
                message = (
                    f"the token's role {_shown(identified.role)} is not service_role; "
                    "service calls need a service_role token or a secret key"
                )
            raise NotServiceRole(message, role=identified.role)
        return identified

    def _identify_secret_key(self, credential: str) -> Credential:
        if not self._secret_key_digests:
            raise AuthError(
                "secret API keys cannot be checked: none is configured", code="not_configured"
            )
        given = _digest(credential)
        matched = False
        for expected in self._secret_key_digests:
            # Every configured key is compared, so the time taken does not say which matched.
            matched |= hmac.compare_digest(given, expected)
        if not matched:
            raise AuthError(
                "the secret API key is not one of the project's", code="invalid_secret_key"
            )
        return Credential(role=SERVICE_ROLE, key_type="secret_key", expires_at=None, subject=None)

    def _identify_jwt(self, token: str) -> Credential:
        if token.count(".") != 2:
            raise AuthError(
                "the credential is neither a JWT (three base64url parts separated by dots) "
                f"nor a secret API key ({SECRET_KEY_PREFIX}...)",
                code="malformed",
            )
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as error:
            raise _from_pyjwt(error) from None
        alg = header.get("alg")
        if not isinstance(alg, str):
            raise AuthError("the JWT header has no 'alg' string", code="malformed")

        key: str | jwt.PyJWK
        key_type: KeyType
        if alg == "HS256":
            if self._jwt_secret is None:
                raise AuthError(
                    "HS256 tokens cannot be verified: no JWT secret is configured",
                    code="not_configured",
                )
            key, key_type = self._jwt_secret, "legacy_jwt"
        elif alg in JWKS_ALGORITHMS:
            if self._jwks is None:
                raise AuthError(
                    f"{alg} tokens cannot be verified: no JWKS URL is configured",
                    code="not_configured",
                )
            kid = header.get("kid")
            if kid is None:
                raise AuthError(
                    f"an {alg} token must name its signing key in the header's 'kid'",
                    code="malformed",
                )
            key, key_type = self._jwks.key(kid, alg), "jwks"
        else:
            raise AuthError(
                f"the token's algorithm {_shown(alg)} is not accepted; "
                "only HS256, ES256 and RS256 are",
                code="unsupported_algorithm",
            )

        try:
            decoded = jwt.decode_complete(token, key, algorithms=[alg], options=_SIGNATURE_ONLY)
        except jwt.PyJWTError as error:
            raise _from_pyjwt(error) from None
        claims: dict[str, Any] = decoded["payload"]
        return self._credential_from_claims(claims, key_type)

    def _credential_from_claims(self, claims: Mapping[str, Any], key_type: KeyType) -> Credential:
        role = _string_claim(claims, "role")
        subject = _string_claim(claims, "sub")
        expires = _time_claim(claims, "exp")
        not_before = _time_claim(claims, "nbf")
        issued = _time_claim(claims, "iat")
        now = self._clock()
        leeway = self._leeway
        if expires is not None and now >= expires.timestamp() + leeway:
            raise AuthError(
                f"the token expired at {_iso(expires)} (leeway {leeway} s)", code="expired"
            )
        if not_before is not None and now + leeway < not_before.timestamp():
            raise AuthError(
                f"the token is not valid before {_iso(not_before)} (nbf; leeway {leeway} s)",
                code="not_yet_valid",
            )
        if issued is not None and issued.timestamp() > now + leeway:
            raise AuthError(
                f"the token claims to be issued at {_iso(issued)}, in the future (iat; "
                f"leeway {leeway} s)",
                code="issued_in_future",
            )
        return Credential(role=role, key_type=key_type, expires_at=expires, subject=subject)


def _check_jwt_secret(secret: str) -> None:
    if len(secret) < MIN_JWT_SECRET_CHARS:
        raise ConfigError(
            f"the JWT secret is shorter than {MIN_JWT_SECRET_CHARS} characters; "
            "Supabase JWT secrets are at least that long"
        )
    try:
        jwt.get_algorithm_by_name("HS256").prepare_key(secret)
    except jwt.InvalidKeyError:
        raise ConfigError(
            "the JWT secret looks like a public or private key (PEM, SSH, DER or JWK), "
            "not the project's HS256 secret"
        ) from None


def _from_pyjwt(error: jwt.PyJWTError) -> AuthError:
    """The AuthError for a PyJWT exception; its own message is dropped (it may quote input)."""
    for error_type, code, message in _PYJWT_ERRORS:
        if isinstance(error, error_type):
            return AuthError(message, code=code)
    return AuthError("the token cannot be verified", code="malformed")


def _string_claim(claims: Mapping[str, Any], name: str) -> str | None:
    value = claims.get(name)
    if value is None or isinstance(value, str):
        return value
    raise AuthError(f"the token's '{name}' claim is not a string", code="malformed")


def _time_claim(claims: Mapping[str, Any], name: str) -> datetime | None:
    """A NumericDate claim as an aware UTC datetime; AuthError malformed if it is not one."""
    value = claims.get(name)
    if value is None:
        return None
    # bool is an int, and JSON allows NaN and Infinity as Python parses it: none is a date.
    # An int is finite however large (math.isfinite would overflow converting 10**400 to a
    # float); fromtimestamp refuses the ones out of range.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AuthError(f"the token's '{name}' claim is not a number of seconds", code="malformed")
    if isinstance(value, float) and not math.isfinite(value):
        raise AuthError(f"the token's '{name}' claim is not a number of seconds", code="malformed")
    try:
        return datetime.fromtimestamp(value, tz=UTC)
    except (OverflowError, OSError, ValueError):
        raise AuthError(f"the token's '{name}' claim is out of range", code="malformed") from None


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _shown(value: str) -> str:
    """``value`` quoted for a message if it is short and printable (it comes from the token)."""
    if len(value) <= 32 and value.isprintable():
        return repr(value)
    return "(not shown)"
