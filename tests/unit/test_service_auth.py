"""Service authentication: which credentials pass, which are refused, and with which code.

Every key is generated at run time. The JWKS endpoint is a counting fake passed as
``fetch_jwks`` (and, in the last tests, a real HTTP server on 127.0.0.1 behind the default
urllib fetcher); the clock is injected so that expiry and cache lifetimes are exact.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from functions.errors import AuthError, ConfigError, NotServiceRole
from functions.service_auth import Credential, KeyType, ServiceAuthenticator, bearer_token
from tests import json_http

DATA = Path(__file__).resolve().parents[1] / "data" / "service_auth"
JWKS_URL = "https://project-ref.supabase.co/auth/v1/.well-known/jwks.json"
NOW = 1_733_000_000.0  # 2024-11-30T20:53:20Z
EC_KID = "ec-key-1"
RSA_KID = "rsa-key-1"

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


# --- keys, clock, JWKS endpoint --------------------------------------------------------------


@dataclass(frozen=True)
class Keys:
    jwt_secret: str
    secret_key: str
    ec_key: ec.EllipticCurvePrivateKey
    rsa_key: rsa.RSAPrivateKey
    foreign_ec_key: ec.EllipticCurvePrivateKey

    def public_pem(self, private_key: PrivateKey) -> bytes:
        return private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys(
        jwt_secret=secrets.token_urlsafe(48),
        secret_key="sb_secret_" + secrets.token_urlsafe(24),
        ec_key=ec.generate_private_key(ec.SECP256R1()),
        rsa_key=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        foreign_ec_key=ec.generate_private_key(ec.SECP256R1()),
    )


def public_jwk(private_key: PrivateKey, kid: str, alg: str) -> dict[str, Any]:
    """The public half of ``private_key`` as Supabase publishes it in its JWKS."""
    jwk: dict[str, Any] = json.loads(
        jwt.get_algorithm_by_name(alg).to_jwk(private_key.public_key())
    )
    jwk.update(kid=kid, alg=alg, use="sig", key_ops=["verify"], ext=True)
    return jwk


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeJwks:
    """Stands in for the project's JWKS endpoint and counts how often it is asked."""

    def __init__(self, keys: list[Any]) -> None:
        self.keys = keys
        self.body: bytes | None = None  # when set, served instead of {"keys": keys}
        self.failing = False
        self.delay = 0.0
        self.calls: list[tuple[str, float]] = []
        self._lock = threading.Lock()

    @property
    def fetches(self) -> int:
        return len(self.calls)

    def __call__(self, url: str, timeout: float) -> bytes:
        with self._lock:
            self.calls.append((url, timeout))
        time.sleep(self.delay)
        if self.failing:
            raise OSError("connection refused")
        return self.body if self.body is not None else json.dumps({"keys": self.keys}).encode()


# --- tokens ----------------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**overrides: Any) -> dict[str, Any]:
    """Claims of a legacy service_role key; an override of None removes the claim."""
    base: dict[str, Any] = {
        "iss": "supabase",
        "ref": "project-ref",
        "role": "service_role",
        "iat": int(NOW) - 60,
        "exp": int(NOW) + 3600,
    }
    base.update(overrides)
    return {name: value for name, value in base.items() if value is not None}


def raw_hs256(header: dict[str, Any], payload: bytes, key: bytes) -> str:
    """An HS256 token signed by hand, for keys and payloads PyJWT refuses to sign with."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(payload)}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def alter_signature(token: str) -> str:
    head, payload, signature = token.split(".")
    changed = "A" if signature[5] != "A" else "B"  # a middle character: still canonical base64url
    return f"{head}.{payload}.{signature[:5]}{changed}{signature[6:]}"


def swap_payload(token: str, new_claims: dict[str, Any]) -> str:
    header, _, signature = token.split(".")
    return f"{header}.{b64(json.dumps(new_claims).encode())}.{signature}"


@dataclass
class World:
    """An authenticator configured with every kind of key, and the means to mint tokens."""

    keys: Keys
    clock: Clock
    jwks: FakeJwks
    auth: ServiceAuthenticator

    def hs256(self, **overrides: Any) -> str:
        return jwt.encode(claims(**overrides), self.keys.jwt_secret, algorithm="HS256")

    def es256(self, kid: str = EC_KID, key: PrivateKey | None = None, **overrides: Any) -> str:
        signer = key if key is not None else self.keys.ec_key
        return jwt.encode(claims(**overrides), signer, algorithm="ES256", headers={"kid": kid})

    def rs256(self, kid: str = RSA_KID, key: PrivateKey | None = None, **overrides: Any) -> str:
        signer = key if key is not None else self.keys.rsa_key
        return jwt.encode(claims(**overrides), signer, algorithm="RS256", headers={"kid": kid})

    def mint(self, alg: str, **overrides: Any) -> str:
        return {"HS256": self.hs256, "ES256": self.es256, "RS256": self.rs256}[alg](**overrides)

    def secrets_shown_nowhere(self) -> list[str]:
        return [
            self.keys.jwt_secret,
            self.keys.secret_key,
            self.keys.secret_key.removeprefix("sb_secret_"),
            self.keys.public_pem(self.keys.ec_key).decode(),
            self.keys.public_pem(self.keys.rsa_key).decode(),
        ]


def make_auth(keys: Keys, clock: Clock, jwks: FakeJwks, **overrides: Any) -> ServiceAuthenticator:
    settings: dict[str, Any] = {
        "jwt_secret": keys.jwt_secret,
        "jwks_url": JWKS_URL,
        "secret_keys": ("sb_secret_" + secrets.token_urlsafe(24), keys.secret_key),
        "fetch_jwks": jwks,
        "clock": clock,
    }
    settings.update(overrides)
    return ServiceAuthenticator(**settings)


@pytest.fixture
def world(keys: Keys) -> World:
    clock = Clock()
    jwks = FakeJwks(
        [public_jwk(keys.ec_key, EC_KID, "ES256"), public_jwk(keys.rsa_key, RSA_KID, "RS256")]
    )
    return World(keys, clock, jwks, make_auth(keys, clock, jwks))


def assert_reveals_nothing(error: Exception, credential: str, world: World) -> None:
    """Neither the credential (nor any sizeable part of it) nor a secret is in the error."""
    text = f"{error} {error!r} {getattr(error, 'message', '')}"
    pieces = [credential.strip(), *credential.split(".")]
    for piece in [p for p in pieces if len(p) >= 8] + world.secrets_shown_nowhere():
        assert piece not in text


# --- accepted credentials --------------------------------------------------------------------

ACCEPTED = [
    pytest.param("HS256", {}, "legacy_jwt", id="legacy HS256 service_role key"),
    pytest.param("ES256", {}, "jwks", id="ES256 signing key from the JWKS"),
    pytest.param("RS256", {}, "jwks", id="RS256 signing key from the JWKS"),
    pytest.param("HS256", {"exp": int(NOW) - 29}, "legacy_jwt", id="expired 29 s ago, in leeway"),
    pytest.param("ES256", {"exp": int(NOW) - 29}, "jwks", id="ES256 expired 29 s ago, in leeway"),
    pytest.param("HS256", {"nbf": int(NOW) + 29}, "legacy_jwt", id="nbf 29 s ahead, in leeway"),
    pytest.param("HS256", {"iat": int(NOW) + 29}, "legacy_jwt", id="iat 29 s ahead, in leeway"),
    pytest.param("HS256", {"exp": None}, "legacy_jwt", id="no exp claim"),
    pytest.param("HS256", {"exp": NOW + 0.5}, "legacy_jwt", id="fractional exp"),
    pytest.param(
        "RS256",
        {"sub": "3f1c7a8e-8f0e-4c53-9b1e-5c0a4f2d6b71", "aud": "authenticated"},
        "jwks",
        id="sub and an aud that is not checked",
    ),
]


@pytest.mark.parametrize(("alg", "overrides", "key_type"), ACCEPTED)
def test_service_role_tokens_are_accepted(
    world: World, alg: str, overrides: dict[str, Any], key_type: KeyType
) -> None:
    token_claims = claims(**overrides)
    exp = token_claims.get("exp")

    credential = world.auth.require_service_role(world.mint(alg, **overrides))

    assert credential == Credential(
        role="service_role",
        key_type=key_type,
        expires_at=None if exp is None else datetime.fromtimestamp(exp, tz=UTC),
        subject=token_claims.get("sub"),
    )
    if credential.expires_at is not None:
        assert credential.expires_at.utcoffset() == timedelta(0)


def test_a_configured_secret_key_is_a_service_credential(world: World) -> None:
    assert world.auth.require_service_role(world.keys.secret_key) == Credential(
        role="service_role", key_type="secret_key", expires_at=None, subject=None
    )


def test_every_configured_secret_key_is_accepted(keys: Keys) -> None:
    rotated = ["sb_secret_" + secrets.token_urlsafe(24) for _ in range(3)]
    auth = ServiceAuthenticator(jwt_secret=None, jwks_url=None, secret_keys=rotated)

    assert [auth.identify(key).key_type for key in rotated] == ["secret_key"] * 3


def test_surrounding_whitespace_is_ignored(world: World) -> None:
    assert world.auth.identify(f"  {world.hs256()}\n").role == "service_role"


def test_identify_reports_other_roles_without_refusing_them(world: World) -> None:
    credential = world.auth.identify(world.es256(role="authenticated", sub="user-1"))

    assert (credential.role, credential.key_type, credential.subject) == (
        "authenticated",
        "jwks",
        "user-1",
    )


@pytest.mark.parametrize(
    ("leeway", "expired_seconds_ago", "accepted"),
    [(0, 1, False), (0, 0, False), (0, -1, True), (120, 119, True), (120, 121, False)],
)
def test_leeway_is_configurable(
    keys: Keys, leeway: int, expired_seconds_ago: int, accepted: bool
) -> None:
    clock = Clock()
    auth = make_auth(keys, clock, FakeJwks([]), leeway_seconds=leeway)
    token = jwt.encode(
        claims(exp=int(NOW) - expired_seconds_ago), keys.jwt_secret, algorithm="HS256"
    )

    if accepted:
        assert auth.identify(token).role == "service_role"
    else:
        with pytest.raises(AuthError) as caught:
            auth.identify(token)
        assert caught.value.code == "expired"


# --- refused credentials ---------------------------------------------------------------------


def _load_static_rejections() -> list[Any]:
    cases = json.loads((DATA / "static_rejections.json").read_text(encoding="utf-8"))
    return [
        pytest.param(lambda _w, c=case["credential"]: c, case["code"], id=case["name"])
        for case in cases
    ]


Builder = Callable[[World], str]

REJECTED: list[Any] = [
    # time claims
    pytest.param(lambda w: w.hs256(exp=int(NOW) - 31), "expired", id="expired 31 s ago"),
    pytest.param(lambda w: w.es256(exp=int(NOW) - 3600), "expired", id="ES256 expired an hour ago"),
    pytest.param(lambda w: w.rs256(exp=int(NOW) - 31), "expired", id="RS256 expired 31 s ago"),
    pytest.param(lambda w: w.hs256(nbf=int(NOW) + 31), "not_yet_valid", id="nbf 31 s ahead"),
    pytest.param(lambda w: w.es256(nbf=int(NOW) + 600), "not_yet_valid", id="ES256 nbf ahead"),
    pytest.param(lambda w: w.hs256(iat=int(NOW) + 31), "issued_in_future", id="iat 31 s ahead"),
    pytest.param(lambda w: w.rs256(iat=int(NOW) + 86400), "issued_in_future", id="RS256 iat ahead"),
    # claims of the wrong shape, correctly signed
    pytest.param(lambda w: w.hs256(exp="tomorrow"), "malformed", id="exp is a string"),
    pytest.param(lambda w: w.hs256(exp=True), "malformed", id="exp is a boolean"),
    pytest.param(lambda w: w.hs256(exp=float("nan")), "malformed", id="exp is NaN"),
    pytest.param(lambda w: w.hs256(nbf=float("inf")), "malformed", id="nbf is Infinity"),
    pytest.param(lambda w: w.hs256(exp=10**20), "malformed", id="exp is out of range"),
    pytest.param(lambda w: w.hs256(iat=[1]), "malformed", id="iat is a list"),
    # every time claim, every JSON type, and integers too large for a float
    *(
        pytest.param(
            lambda w, alg=alg, name=name, value=value: w.mint(alg, **{name: value}),
            "malformed",
            id=f"{alg} {name} is {label}",
        )
        for alg in ("HS256", "ES256")
        for name in ("exp", "nbf", "iat")
        for label, value in (
            ("10**400", 10**400),
            ("-10**400", -(10**400)),
            ("1e308", 1e308),
            ("an object", {"a": 1}),
            ("a string", "1700000000"),
            ("a list", [1700000000]),
        )
    ),
    pytest.param(lambda w: w.hs256(role=["service_role"]), "malformed", id="role is a list"),
    pytest.param(lambda w: w.es256(sub=42), "malformed", id="sub is a number"),
    pytest.param(
        lambda w: raw_hs256({"alg": "HS256"}, b"role=service_role", w.keys.jwt_secret.encode()),
        "malformed",
        id="payload is not JSON",
    ),
    pytest.param(
        lambda w: raw_hs256({"alg": "HS256"}, b'["service_role"]', w.keys.jwt_secret.encode()),
        "malformed",
        id="payload is a JSON array",
    ),
    pytest.param(
        lambda w: jwt.encode(claims(), w.keys.jwt_secret, "HS256", headers={"crit": ["exp"]}),
        "malformed",
        id="header marks an unknown extension critical",
    ),
    pytest.param(lambda w: "x" * 16_385, "malformed", id="longer than 16384 characters"),
    # signatures
    pytest.param(
        lambda w: swap_payload(w.hs256(role="authenticated"), claims()),
        "bad_signature",
        id="HS256 payload tampered to service_role",
    ),
    pytest.param(
        lambda w: swap_payload(w.es256(role="anon"), claims()),
        "bad_signature",
        id="ES256 payload tampered to service_role",
    ),
    pytest.param(
        lambda w: swap_payload(w.rs256(exp=int(NOW) - 3600), claims()),
        "bad_signature",
        id="RS256 exp tampered to extend its life",
    ),
    pytest.param(
        lambda w: jwt.encode(claims(), secrets.token_urlsafe(48), algorithm="HS256"),
        "bad_signature",
        id="HS256 signed with another secret",
    ),
    pytest.param(
        lambda w: w.es256(key=w.keys.foreign_ec_key),
        "bad_signature",
        id="ES256 signed by a foreign key under the project's kid",
    ),
    pytest.param(
        lambda w: alter_signature(w.hs256()), "bad_signature", id="HS256 signature altered"
    ),
    pytest.param(
        lambda w: alter_signature(w.rs256()), "bad_signature", id="RS256 signature altered"
    ),
    # algorithm confusion: the public keys of the JWKS used as HMAC secrets
    pytest.param(
        lambda w: raw_hs256(
            {"alg": "HS256", "kid": RSA_KID},
            json.dumps(claims()).encode(),
            w.keys.public_pem(w.keys.rsa_key),
        ),
        "bad_signature",
        id="HS256 keyed with the RSA public key PEM",
    ),
    pytest.param(
        lambda w: raw_hs256(
            {"alg": "HS256", "kid": EC_KID},
            json.dumps(claims()).encode(),
            w.keys.public_pem(w.keys.ec_key),
        ),
        "bad_signature",
        id="HS256 keyed with the EC public key PEM",
    ),
    pytest.param(
        lambda w: raw_hs256(
            {"alg": "HS256", "kid": RSA_KID},
            json.dumps(claims()).encode(),
            json.dumps(public_jwk(w.keys.rsa_key, RSA_KID, "RS256")).encode(),
        ),
        "bad_signature",
        id="HS256 keyed with the RSA public JWK",
    ),
    pytest.param(
        lambda w: w.rs256(kid=EC_KID),
        "unknown_key",
        id="RS256 token naming the EC key's kid",
    ),
    pytest.param(
        lambda w: w.es256(kid=RSA_KID),
        "unknown_key",
        id="ES256 token naming the RSA key's kid",
    ),
    pytest.param(
        lambda w: w.es256(kid="forged-kid", key=w.keys.foreign_ec_key),
        "unknown_key",
        id="ES256 with a kid that is not in the JWKS",
    ),
    # algorithms outside HS256/ES256/RS256, properly signed
    pytest.param(
        lambda w: jwt.encode(claims(), "", algorithm="none"),
        "unsupported_algorithm",
        id="unsigned token from PyJWT (alg none)",
    ),
    pytest.param(
        lambda w: jwt.encode(claims(), w.keys.jwt_secret * 2, algorithm="HS384"),
        "unsupported_algorithm",
        id="HS384 signed with the JWT secret",
    ),
    pytest.param(
        lambda w: jwt.encode(claims(), w.keys.jwt_secret * 2, algorithm="HS512"),
        "unsupported_algorithm",
        id="HS512 signed with the JWT secret",
    ),
    pytest.param(
        lambda w: jwt.encode(claims(), w.keys.rsa_key, "PS256", headers={"kid": RSA_KID}),
        "unsupported_algorithm",
        id="PS256 signed with the project's RSA key",
    ),
    # secret API keys
    pytest.param(
        lambda w: "sb_secret_" + secrets.token_urlsafe(24), "invalid_secret_key", id="wrong key"
    ),
    pytest.param(
        lambda w: w.keys.secret_key + "x", "invalid_secret_key", id="secret key plus one char"
    ),
    pytest.param(
        lambda w: w.keys.secret_key[:-1], "invalid_secret_key", id="secret key minus one char"
    ),
    pytest.param(lambda w: "sb_secret_", "invalid_secret_key", id="secret key prefix only"),
    *_load_static_rejections(),
]


@pytest.mark.parametrize(("build", "code"), REJECTED)
def test_refused_credentials_say_why_and_reveal_nothing(
    world: World, build: Builder, code: str
) -> None:
    credential = build(world)

    with pytest.raises(AuthError) as caught:
        world.auth.require_service_role(credential)

    assert caught.value.code == code
    assert type(caught.value) is AuthError  # a 401, never mistaken for a 403
    assert_reveals_nothing(caught.value, credential, world)


@pytest.mark.parametrize(
    ("configured", "build"),
    [
        pytest.param({"jwt_secret": None}, lambda w: w.hs256(), id="HS256 without a JWT secret"),
        pytest.param(
            {"jwt_secret": None},
            lambda w: raw_hs256(
                {"alg": "HS256", "kid": RSA_KID},
                json.dumps(claims()).encode(),
                w.keys.public_pem(w.keys.rsa_key),
            ),
            id="HS256 keyed with a JWKS public key, without a JWT secret",
        ),
        pytest.param({"jwks_url": None}, lambda w: w.es256(), id="ES256 without a JWKS URL"),
        pytest.param({"jwks_url": None}, lambda w: w.rs256(), id="RS256 without a JWKS URL"),
        pytest.param({"secret_keys": ()}, lambda w: w.keys.secret_key, id="no secret keys"),
    ],
)
def test_credentials_nothing_is_configured_for_are_refused(
    world: World, configured: dict[str, Any], build: Builder
) -> None:
    auth = make_auth(world.keys, world.clock, world.jwks, **configured)
    credential = build(world)

    with pytest.raises(AuthError) as caught:
        auth.identify(credential)

    assert caught.value.code == "not_configured"
    assert world.jwks.fetches == 0
    assert_reveals_nothing(caught.value, credential, world)


def test_forged_algorithms_never_reach_the_jwks_endpoint(world: World) -> None:
    for param in _load_static_rejections():
        with pytest.raises(AuthError):
            world.auth.identify(param.values[0](world))

    assert world.jwks.fetches == 0


# --- roles -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "role"),
    [
        pytest.param(lambda w: w.hs256(role="authenticated"), "authenticated", id="HS256 user"),
        pytest.param(lambda w: w.es256(role="authenticated"), "authenticated", id="ES256 user"),
        pytest.param(lambda w: w.hs256(role="anon"), "anon", id="legacy anon key"),
        pytest.param(lambda w: w.rs256(role="anon"), "anon", id="RS256 anon"),
        pytest.param(lambda w: w.hs256(role="postgres"), "postgres", id="another database role"),
        pytest.param(lambda w: w.hs256(role="Service_Role"), "Service_Role", id="role case"),
        pytest.param(lambda w: w.hs256(role=None), None, id="no role claim"),
        pytest.param(
            lambda w: "sb_publishable_" + secrets.token_urlsafe(24), "anon", id="publishable key"
        ),
    ],
)
def test_other_roles_are_refused_with_not_service_role(
    world: World, build: Builder, role: str | None
) -> None:
    credential = build(world)

    with pytest.raises(NotServiceRole) as caught:
        world.auth.require_service_role(credential)

    assert (caught.value.code, caught.value.role) == ("not_service_role", role)
    assert_reveals_nothing(caught.value, credential, world)


# --- the JWKS cache --------------------------------------------------------------------------


def test_jwks_is_fetched_lazily_with_the_configured_url_and_timeout(world: World) -> None:
    world.auth.identify(world.hs256())
    world.auth.identify(world.keys.secret_key)
    assert world.jwks.fetches == 0

    world.auth.identify(world.es256())

    assert world.jwks.calls == [(JWKS_URL, 5.0)]


def test_jwks_is_fetched_once_for_many_verifications(world: World) -> None:
    for _ in range(10):
        world.auth.identify(world.es256())
        world.auth.identify(world.rs256())

    assert world.jwks.fetches == 1


@pytest.mark.parametrize(("ttl", "configured"), [(600, {}), (60, {"jwks_ttl_seconds": 60})])
def test_jwks_is_fetched_again_when_its_ttl_has_passed(
    world: World, ttl: int, configured: dict[str, Any]
) -> None:
    auth = make_auth(world.keys, world.clock, world.jwks, **configured)
    token = world.es256(exp=None)
    auth.identify(token)

    world.clock.advance(ttl - 1)
    auth.identify(token)
    assert world.jwks.fetches == 1

    world.clock.advance(1)
    auth.identify(token)
    assert world.jwks.fetches == 2


def test_unknown_kid_costs_one_refresh_per_interval(world: World) -> None:
    world.auth.identify(world.es256())
    world.clock.advance(31)

    for kid in ("forged-1", "forged-2", "forged-3"):
        with pytest.raises(AuthError) as caught:
            world.auth.identify(world.es256(kid=kid))
        assert caught.value.code == "unknown_key"
    assert world.jwks.fetches == 2  # the first fetch, and one refresh for forged-1

    world.clock.advance(30)
    with pytest.raises(AuthError):
        world.auth.identify(world.es256(kid="forged-4"))
    assert world.jwks.fetches == 3


def test_unknown_kid_on_a_cold_cache_is_answered_after_one_fetch(world: World) -> None:
    with pytest.raises(AuthError) as caught:
        world.auth.identify(world.es256(kid="forged"))

    assert (caught.value.code, world.jwks.fetches) == ("unknown_key", 1)


def test_a_rotated_in_key_is_accepted_after_one_refresh(world: World) -> None:
    new_key = ec.generate_private_key(ec.SECP256R1())
    world.auth.identify(world.es256())
    world.clock.advance(31)

    world.jwks.keys = [*world.jwks.keys, public_jwk(new_key, "ec-key-2", "ES256")]
    credential = world.auth.identify(world.es256(kid="ec-key-2", key=new_key))

    assert (credential.key_type, world.jwks.fetches) == ("jwks", 2)
    assert world.auth.identify(world.es256()).key_type == "jwks"  # the old key still works
    assert world.jwks.fetches == 2


def test_a_rotated_in_key_waits_for_the_refresh_interval(world: World) -> None:
    new_key = ec.generate_private_key(ec.SECP256R1())
    world.auth.identify(world.es256())
    world.jwks.keys = [*world.jwks.keys, public_jwk(new_key, "ec-key-2", "ES256")]
    token = world.es256(kid="ec-key-2", key=new_key)

    world.clock.advance(29)
    with pytest.raises(AuthError) as caught:
        world.auth.identify(token)
    assert (caught.value.code, world.jwks.fetches) == ("unknown_key", 1)

    world.clock.advance(1)
    assert world.auth.identify(token).key_type == "jwks"


def test_a_revoked_key_stops_working_when_the_ttl_runs_out(world: World) -> None:
    token = world.rs256(exp=None)
    world.auth.identify(token)
    world.jwks.keys = [key for key in world.jwks.keys if key["kid"] != RSA_KID]

    world.clock.advance(599)
    assert world.auth.identify(token).key_type == "jwks"

    world.clock.advance(1)
    with pytest.raises(AuthError) as caught:
        world.auth.identify(token)
    assert caught.value.code == "unknown_key"


def test_a_failed_fetch_is_retried_after_the_refresh_interval(world: World) -> None:
    world.jwks.failing = True
    for _ in range(3):
        with pytest.raises(AuthError) as caught:
            world.auth.identify(world.es256())
        assert caught.value.code == "jwks_unavailable"
    assert world.jwks.fetches == 1

    world.jwks.failing = False
    world.clock.advance(30)

    assert world.auth.identify(world.es256()).key_type == "jwks"
    assert world.jwks.fetches == 2


def test_an_expired_jwks_is_not_used_when_the_refetch_fails(world: World) -> None:
    token = world.es256(exp=None)
    world.auth.identify(token)
    world.jwks.failing = True
    world.clock.advance(600)

    with pytest.raises(AuthError) as caught:
        world.auth.identify(token)

    assert caught.value.code == "jwks_unavailable"


def test_a_failed_refresh_for_an_unknown_kid_keeps_the_known_keys(world: World) -> None:
    world.auth.identify(world.es256())
    world.jwks.failing = True
    world.clock.advance(31)

    with pytest.raises(AuthError) as caught:
        world.auth.identify(world.es256(kid="new-kid"))

    assert caught.value.code == "jwks_unavailable"
    assert world.auth.identify(world.rs256()).key_type == "jwks"


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"<html>502 Bad Gateway</html>", id="not JSON"),
        pytest.param(b"\xff\xfe\x00", id="not text"),
        pytest.param(b"[]", id="a JSON array"),
        pytest.param(b'{"keys": "ES256"}', id="keys is not a list"),
        pytest.param(b'{"jwks": []}', id="no keys member"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, id="nested too deep"),
        pytest.param(b'{"keys": []' + b" " * 1_048_576 + b"}", id="larger than 1 MiB"),
    ],
)
def test_an_unusable_jwks_document_is_jwks_unavailable(world: World, body: bytes) -> None:
    world.jwks.body = body

    with pytest.raises(AuthError) as caught:
        world.auth.identify(world.es256())

    assert caught.value.code == "jwks_unavailable"


@pytest.mark.parametrize(
    ("entry", "token", "code"),
    [
        pytest.param(
            lambda k: {"kty": "oct", "kid": "oct-1", "k": b64(b"published-secret-" * 3)},
            lambda w: raw_hs256(
                {"alg": "HS256", "kid": "oct-1"},
                json.dumps(claims()).encode(),
                b"published-secret-" * 3,
            ),
            "bad_signature",
            id="HS256 signed with an oct key the JWKS publishes",
        ),
        pytest.param(
            lambda k: {**public_jwk(k.foreign_ec_key, "enc-1", "ES256"), "use": "enc"},
            lambda w: w.es256(kid="enc-1", key=w.keys.foreign_ec_key),
            "unknown_key",
            id="EC key published for encryption",
        ),
        pytest.param(
            lambda k: {**public_jwk(k.foreign_ec_key, "derive-1", "ES256"), "key_ops": ["derive"]},
            lambda w: w.es256(kid="derive-1", key=w.keys.foreign_ec_key),
            "unknown_key",
            id="EC key published without the verify operation",
        ),
        pytest.param(
            lambda k: {**public_jwk(k.foreign_ec_key, "mislabelled", "ES256"), "alg": "RS256"},
            lambda w: w.es256(kid="mislabelled", key=w.keys.foreign_ec_key),
            "unknown_key",
            id="EC key declared for RS256",
        ),
        pytest.param(
            lambda k: public_jwk(ec.generate_private_key(ec.SECP384R1()), "p384", "ES384"),
            lambda w: w.es256(kid="p384", key=w.keys.foreign_ec_key),
            "unknown_key",
            id="P-384 key",
        ),
        pytest.param(
            lambda k: {**public_jwk(k.foreign_ec_key, "broken", "ES256"), "x": "AAAA"},
            lambda w: w.es256(kid="broken", key=w.keys.foreign_ec_key),
            "unknown_key",
            id="EC key whose point is broken",
        ),
    ],
)
def test_jwks_entries_that_cannot_verify_are_ignored(
    world: World,
    entry: Callable[[Keys], dict[str, Any]],
    token: Builder,
    code: str,
) -> None:
    world.jwks.keys = [*world.jwks.keys, entry(world.keys), "not a key", {"kty": "EC"}]
    credential = token(world)

    with pytest.raises(AuthError) as caught:
        world.auth.identify(credential)

    assert caught.value.code == code
    assert world.auth.identify(world.es256()).key_type == "jwks"  # the good keys still work


def test_concurrent_first_requests_share_one_fetch(world: World) -> None:
    world.jwks.delay = 0.05
    tokens = [world.es256(sub=f"caller-{n}") for n in range(16)]
    barrier = threading.Barrier(len(tokens))

    def verify(token: str) -> Credential:
        barrier.wait()
        return world.auth.identify(token)

    with ThreadPoolExecutor(max_workers=len(tokens)) as pool:
        credentials = list(pool.map(verify, tokens))

    assert [c.subject for c in credentials] == [f"caller-{n}" for n in range(16)]
    assert world.jwks.fetches == 1


def test_concurrent_forged_kids_cost_one_refresh(world: World) -> None:
    world.auth.identify(world.es256())
    world.clock.advance(31)
    world.jwks.delay = 0.05
    tokens = [world.es256(kid=f"forged-{n}") for n in range(16)]
    barrier = threading.Barrier(len(tokens))

    def verify(token: str) -> str:
        barrier.wait()
        try:
            world.auth.identify(token)
        except AuthError as error:
            return error.code
        return "accepted"

    with ThreadPoolExecutor(max_workers=len(tokens)) as pool:
        codes = list(pool.map(verify, tokens))

    assert codes == ["unknown_key"] * 16
    assert world.jwks.fetches == 2


# --- the default fetcher against a real local server -----------------------------------------


@dataclass
class LocalJwks:
    server: ThreadingHTTPServer
    document: dict[str, Any]
    status: int = 200
    delay: float = 0.0
    paths: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}/auth/v1/.well-known/jwks.json"


@pytest.fixture
def local_jwks(keys: Keys) -> Iterator[LocalJwks]:
    state: LocalJwks

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.paths.append(self.path)
            time.sleep(state.delay)
            body = json.dumps(state.document).encode()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # client timed out
                json_http.answer(self, state.status, body)

        def log_message(self, *args: Any) -> None:  # keep the test output quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state = LocalJwks(server, {"keys": [public_jwk(keys.ec_key, EC_KID, "ES256")]})
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join()


def local_auth(url: str, timeout: float = 5.0) -> ServiceAuthenticator:
    return ServiceAuthenticator(jwt_secret=None, jwks_url=url, jwks_fetch_timeout_seconds=timeout)


def real_es256(keys: Keys) -> str:
    payload = claims(iat=int(time.time()), exp=int(time.time()) + 60)
    return jwt.encode(payload, keys.ec_key, algorithm="ES256", headers={"kid": EC_KID})


def test_default_fetcher_reads_the_jwks_over_http(keys: Keys, local_jwks: LocalJwks) -> None:
    auth = local_auth(local_jwks.url)

    first = auth.require_service_role(real_es256(keys))
    second = auth.require_service_role(real_es256(keys))

    assert (first.key_type, second.key_type) == ("jwks", "jwks")
    assert local_jwks.paths == ["/auth/v1/.well-known/jwks.json"]


def test_default_fetcher_reports_an_error_status_as_jwks_unavailable(
    keys: Keys, local_jwks: LocalJwks
) -> None:
    local_jwks.status = 503

    with pytest.raises(AuthError) as caught:
        local_auth(local_jwks.url).identify(real_es256(keys))

    assert caught.value.code == "jwks_unavailable"


def test_default_fetcher_gives_up_after_its_timeout(keys: Keys, local_jwks: LocalJwks) -> None:
    local_jwks.delay = 1.0
    started = time.monotonic()

    with pytest.raises(AuthError) as caught:
        local_auth(local_jwks.url, timeout=0.2).identify(real_es256(keys))

    assert caught.value.code == "jwks_unavailable"
    assert time.monotonic() - started < 1.5


def test_default_fetcher_reports_a_server_that_is_down(keys: Keys) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/auth/v1/.well-known/jwks.json"

    with pytest.raises(AuthError) as caught:
        local_auth(url).identify(real_es256(keys))

    assert caught.value.code == "jwks_unavailable"


# --- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [
        pytest.param({"jwt_secret": ""}, id="empty JWT secret"),
        pytest.param({"jwt_secret": "too-short-a-secret"}, id="JWT secret under 32 chars"),
        pytest.param({"jwt_secret": "rsa public key PEM"}, id="public key PEM as JWT secret"),
        pytest.param({"jwt_secret": "rsa public JWK"}, id="public JWK as JWT secret"),
        pytest.param({"secret_keys": ["sk_live_" + "x" * 32]}, id="key without sb_secret_"),
        pytest.param({"secret_keys": ["sb_secret_"]}, id="the bare prefix as a key"),
        pytest.param({"secret_keys": "sb_secret_" + "x" * 32}, id="one string, not a list"),
        pytest.param({"jwks_url": "http://project-ref.supabase.co/jwks.json"}, id="plain http"),
        pytest.param({"jwks_url": "file://localhost/jwks.json"}, id="file URL"),
        pytest.param({"jwks_url": "project-ref.supabase.co/jwks.json"}, id="no scheme"),
        pytest.param({"leeway_seconds": -1}, id="negative leeway"),
        pytest.param({"jwks_ttl_seconds": 0}, id="zero TTL"),
        pytest.param({"jwks_fetch_timeout_seconds": 0}, id="zero fetch timeout"),
    ],
)
def test_unusable_configuration_fails_at_construction(keys: Keys, settings: dict[str, Any]) -> None:
    if settings.get("jwt_secret") == "rsa public key PEM":
        settings = {"jwt_secret": keys.public_pem(keys.rsa_key).decode()}
    if settings.get("jwt_secret") == "rsa public JWK":
        settings = {"jwt_secret": json.dumps(public_jwk(keys.rsa_key, RSA_KID, "RS256"))}

    with pytest.raises(ConfigError) as caught:
        make_auth(keys, Clock(), FakeJwks([]), **settings)

    for value in settings.values():
        if isinstance(value, str) and len(value) >= 8 and "://" not in value:
            assert value not in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:54321/auth/v1/.well-known/jwks.json",
        "http://localhost:54321/auth/v1/.well-known/jwks.json",
        "http://[::1]:54321/auth/v1/.well-known/jwks.json",
    ],
)
def test_plain_http_is_accepted_for_a_local_stack(keys: Keys, url: str) -> None:
    jwks = FakeJwks([public_jwk(keys.ec_key, EC_KID, "ES256")])
    auth = make_auth(keys, Clock(), jwks, jwks_url=url)

    assert auth.identify(World(keys, Clock(), jwks, auth).es256()).key_type == "jwks"
    assert jwks.calls[0][0] == url


# --- the Authorization header ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc.def.ghi", "abc.def.ghi"),
        ("bearer abc.def.ghi", "abc.def.ghi"),
        ("BEARER sb_secret_abc", "sb_secret_abc"),
        ("  Bearer   abc.def.ghi  ", "abc.def.ghi"),
        ("Bearer\tabc.def.ghi", "abc.def.ghi"),
    ],
)
def test_bearer_token_is_taken_from_the_header(header: str, token: str) -> None:
    assert bearer_token(header) == token


@pytest.mark.parametrize(
    ("header", "code"),
    [
        (None, "missing_credentials"),
        ("", "missing_credentials"),
        ("   ", "missing_credentials"),
        ("Bearer", "missing_credentials"),
        ("Bearer    ", "missing_credentials"),
        ("Basic dXNlcjpwYXNzd29yZA==", "malformed"),
        ("Token abcdefgh.ijk.lmn", "malformed"),
        ("abcdefgh.ijk.lmn", "malformed"),
        ("Bearerabcdefgh.ijk.lmn", "malformed"),
        ("Bearer abcdefgh.ijk.lmn trailing", "malformed"),
    ],
)
def test_bearer_token_refuses_other_headers(header: str | None, code: str) -> None:
    with pytest.raises(AuthError) as caught:
        bearer_token(header)

    assert caught.value.code == code
    for word in [*(header or "").split()[1:], "dXNlcjpwYXNzd29yZA", "abcdefgh"]:
        assert word not in str(caught.value)
