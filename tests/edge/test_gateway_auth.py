"""common.gateway_auth: keys on disk, signed requests, and everything a verifier must refuse."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from common.clock import ManualClock
from common.gateway_auth import (
    AUDIENCE,
    DEFAULT_LEEWAY_S,
    SKEW_FLAG_MS,
    TOKEN_TTL_S,
    TOKEN_TYPE,
    GatewayAuthError,
    GatewayKeyError,
    GatewayVerifier,
    InvalidToken,
    ReplayCacheFull,
    RequestMismatch,
    RequestSigner,
    TokenExpired,
    TokenNotYetValid,
    TokenReplayed,
    UnknownGateway,
    VerifiedRequest,
    body_hash,
    generate_private_key,
    load_private_key,
    parse_public_key_b64,
    public_key_b64,
    public_key_bytes,
    save_private_key,
)
from common.problem import ProblemError

PATH = "/api/v1/sync/batches"
BODY = b"\x1f\x8b compressed batch"
GW = "gw-1"


class Env:
    def __init__(self, replay_cache_size: int = 1000) -> None:
        self.key = generate_private_key()
        self.keys: dict[str, bytes] = {GW: public_key_bytes(self.key)}
        self.clock = ManualClock()  # shared: gateway and cloud clocks agree unless a test says
        self.signer = RequestSigner(GW, self.key, self.clock)
        self.verifier = GatewayVerifier(
            self.keys.get, self.clock, replay_cache_size=replay_cache_size
        )

    def token(self, method: str = "POST", path: str = PATH, body: bytes = BODY) -> str:
        return self.signer.token(method, path, body)

    def verify(
        self, token: str, method: str = "POST", path: str = PATH, body: bytes = BODY
    ) -> VerifiedRequest:
        return self.verifier.verify(token, method=method, path=path, body=body)


@pytest.fixture
def env() -> Env:
    return Env()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def good_claims(env: Env) -> dict[str, object]:
    iat = env.clock.now_ms() // 1000
    return {
        "iss": GW,
        "aud": AUDIENCE,
        "iat": iat,
        "exp": iat + 60,
        "jti": "a-random-nonce-of-some-length",
        "htm": "POST",
        "htu": PATH,
        "bsh": body_hash(BODY),
    }


# -- accepted --------------------------------------------------------------------------------


def test_valid_request_is_accepted_and_reports_no_skew(env: Env) -> None:
    token = env.token()
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "EdDSA" and header["typ"] == TOKEN_TYPE
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == TOKEN_TTL_S
    assert claims["bsh"] == b64url(hashlib.sha256(BODY).digest())
    ok = env.verify(token)
    assert ok.gateway_id == GW and ok.jti == claims["jti"]
    assert ok.skew_ms == 0 and not ok.clock_skewed
    # Via the header, with the method in any case.
    ok2 = env.verifier.verify_authorization(
        env.signer.headers("get", "/api/v1/sync/config?since=3")["Authorization"],
        method="GET",
        path="/api/v1/sync/config?since=3",
        body=b"",
    )
    assert ok2.gateway_id == GW


def test_each_token_is_unique(env: Env) -> None:
    assert env.token() != env.token()


# -- bound to the request --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", PATH, BODY + b"x"),  # tampered body
        ("POST", PATH, b""),
        ("POST", "/api/v1/sync/config", BODY),  # other path
        ("POST", PATH + "?x=1", BODY),
        ("PUT", PATH, BODY),  # other method
    ],
)
def test_token_is_bound_to_method_path_and_body(
    env: Env, method: str, path: str, body: bytes
) -> None:
    token = env.token()
    with pytest.raises(RequestMismatch) as info:
        env.verify(token, method, path, body)
    assert info.value.problem.status == 401
    env.verify(token)  # a refused attempt did not burn the token for its real request


# -- time ------------------------------------------------------------------------------------


def test_expired_token_is_refused_with_the_server_time(env: Env) -> None:
    token = env.token()
    env.clock.advance(TOKEN_TTL_S + DEFAULT_LEEWAY_S + 1)
    with pytest.raises(TokenExpired) as info:
        env.verify(token)
    doc = info.value.problem.to_dict()
    assert doc["status"] == 401 and doc["server_time_ms"] == env.clock.now_ms()


def test_expired_within_leeway_is_accepted(env: Env) -> None:
    token = env.token()
    env.clock.advance(TOKEN_TTL_S + DEFAULT_LEEWAY_S - 1)
    assert env.verify(token).skew_ms < 0


def test_future_iat_beyond_leeway_is_refused_then_calibration_fixes_it(env: Env) -> None:
    gateway_clock = ManualClock(env.clock.now_ms() + (DEFAULT_LEEWAY_S + 5) * 1000)
    signer = RequestSigner(GW, env.key, gateway_clock)
    with pytest.raises(TokenNotYetValid) as info:
        env.verify(signer.token("POST", PATH, BODY))
    signer.calibrate(info.value.problem.extra["server_time_ms"])
    ok = env.verify(signer.token("POST", PATH, BODY))
    assert abs(ok.skew_ms) < 1000 and not ok.clock_skewed


def test_skew_within_leeway_is_reported_not_refused(env: Env) -> None:
    ahead = ManualClock(env.clock.now_ms() + SKEW_FLAG_MS + 60_000)
    ok = env.verify(RequestSigner(GW, env.key, ahead).token("POST", PATH, BODY))
    assert ok.clock_skewed and ok.skew_ms == SKEW_FLAG_MS + 60_000
    behind = ManualClock(env.clock.now_ms() - 60_000)
    ok = env.verify(RequestSigner(GW, env.key, behind).token("POST", PATH, BODY))
    assert not ok.clock_skewed and ok.skew_ms == -60_000


def test_long_lived_token_is_refused(env: Env) -> None:
    signer = RequestSigner(GW, env.key, env.clock, ttl_s=3600)
    with pytest.raises(InvalidToken, match="lifetime"):
        env.verify(signer.token("POST", PATH, BODY))


# -- forged tokens ---------------------------------------------------------------------------


def test_alg_none_is_refused(env: Env) -> None:
    header = {"alg": "none", "typ": TOKEN_TYPE}
    token = ".".join(
        [b64url(json.dumps(header).encode()), b64url(json.dumps(good_claims(env)).encode()), ""]
    )
    with pytest.raises(InvalidToken, match="algorithm"):
        env.verify(token)


@pytest.mark.parametrize("secret_kind", ["raw", "base64"])
def test_hs256_signed_with_the_public_key_is_refused(env: Env, secret_kind: str) -> None:
    raw = env.keys[GW]
    secret = raw if secret_kind == "raw" else public_key_b64(env.key).encode()
    token = jwt.encode(good_claims(env), secret, algorithm="HS256", headers={"typ": TOKEN_TYPE})
    with pytest.raises(InvalidToken, match="algorithm"):
        env.verify(token)


def test_token_signed_by_another_key_is_refused(env: Env) -> None:
    other = RequestSigner(GW, generate_private_key(), env.clock)
    with pytest.raises(InvalidToken, match="token rejected"):
        env.verify(other.token("POST", PATH, BODY))


def test_tampered_claims_break_the_signature(env: Env) -> None:
    head, payload, sig = env.token().split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["htu"] = "/api/v1/gateways/enroll"
    forged = ".".join([head, b64url(json.dumps(claims).encode()), sig])
    with pytest.raises(InvalidToken):
        env.verify(forged, path="/api/v1/gateways/enroll")


def test_wrong_audience_or_type_is_refused(env: Env) -> None:
    claims = {**good_claims(env), "aud": "someone-else"}
    token = jwt.encode(claims, env.key, algorithm="EdDSA", headers={"typ": TOKEN_TYPE})
    with pytest.raises(InvalidToken, match=r"(?i)audience"):
        env.verify(token)
    token = jwt.encode(good_claims(env), env.key, algorithm="EdDSA")  # typ "JWT"
    with pytest.raises(InvalidToken, match="type"):
        env.verify(token)


def test_missing_claim_is_refused(env: Env) -> None:
    claims = good_claims(env)
    del claims["bsh"]
    token = jwt.encode(claims, env.key, algorithm="EdDSA", headers={"typ": TOKEN_TYPE})
    with pytest.raises(InvalidToken, match="bsh"):
        env.verify(token)


def test_unknown_and_revoked_gateways_are_refused(env: Env) -> None:
    stranger = RequestSigner("gw-unknown", generate_private_key(), env.clock)
    with pytest.raises(UnknownGateway):
        env.verify(stranger.token("POST", PATH, BODY))
    token = env.token()
    del env.keys[GW]  # revoked in the cloud
    with pytest.raises(UnknownGateway) as info:
        env.verify(token)
    assert info.value.problem.status == 401


@settings(max_examples=200, deadline=None)
@given(token=st.text(max_size=200) | st.just("a.b.c") | st.just("e30.e30."))
def test_garbage_tokens_are_invalid_token(token: str) -> None:
    env = Env()
    with pytest.raises(GatewayAuthError):
        env.verify(token)


def test_missing_or_wrong_authorization_header(env: Env) -> None:
    for header in [None, "", "Basic abc", "Bearer", "Bearer  "]:
        with pytest.raises(InvalidToken):
            env.verifier.verify_authorization(header, method="POST", path=PATH, body=BODY)


# -- replay ----------------------------------------------------------------------------------


def test_replayed_token_is_refused(env: Env) -> None:
    token = env.token()
    env.verify(token)
    with pytest.raises(TokenReplayed) as info:
        env.verify(token)
    assert info.value.problem.status == 401
    env.clock.advance(30)
    with pytest.raises(TokenReplayed):
        env.verify(token)


def test_replay_cache_is_bounded_and_forgets_expired_tokens() -> None:
    env = Env(replay_cache_size=3)
    for _ in range(3):
        env.verify(env.token())
    with pytest.raises(ReplayCacheFull) as info:
        env.verify(env.token())
    assert info.value.problem.status == 503
    assert env.verifier.replay_cache_len() == 3
    env.clock.advance(TOKEN_TTL_S + DEFAULT_LEEWAY_S + 1)  # all three can no longer pass
    env.verify(env.token())
    assert env.verifier.replay_cache_len() == 1


def test_errors_form_one_tree_of_problem_errors() -> None:
    for cls in (
        InvalidToken,
        TokenExpired,
        TokenNotYetValid,
        RequestMismatch,
        UnknownGateway,
        TokenReplayed,
        ReplayCacheFull,
    ):
        assert issubclass(cls, GatewayAuthError) and issubclass(cls, ProblemError)
    err = UnknownGateway("x")
    assert err.problem.type.endswith("/gateway-unauthorized") and err.problem.status == 401


# -- keys ------------------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o000, 0o277])
def test_private_key_file_is_0600_and_loads_back(tmp_path: Path, umask: int) -> None:
    key = generate_private_key()
    path = tmp_path / "identity" / "gateway.key"
    old = os.umask(umask)
    try:
        save_private_key(key, path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert [p.name for p in path.parent.iterdir()] == ["gateway.key"]  # no temp file left
    loaded = load_private_key(path)
    assert public_key_bytes(loaded) == public_key_bytes(key)
    # The loaded key signs what the original public key verifies.
    clock = ManualClock()
    verifier = GatewayVerifier({GW: public_key_bytes(key)}.get, clock)
    token = RequestSigner(GW, loaded, clock).token("POST", PATH, BODY)
    assert verifier.verify(token, method="POST", path=PATH, body=BODY).gateway_id == GW


def test_key_is_not_overwritten_by_accident(tmp_path: Path) -> None:
    path = tmp_path / "gateway.key"
    first = generate_private_key()
    save_private_key(first, path)
    with pytest.raises(GatewayKeyError, match="exists"):
        save_private_key(generate_private_key(), path)
    assert public_key_bytes(load_private_key(path)) == public_key_bytes(first)
    save_private_key(generate_private_key(), path, overwrite=True)
    assert public_key_bytes(load_private_key(path)) != public_key_bytes(first)


def test_load_refuses_open_permissions_and_wrong_keys(tmp_path: Path) -> None:
    path = tmp_path / "gateway.key"
    save_private_key(generate_private_key(), path)
    path.chmod(0o644)
    with pytest.raises(GatewayKeyError, match="chmod 600"):
        load_private_key(path)
    ec_path = tmp_path / "ec.key"
    ec_path.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    ec_path.chmod(0o600)
    with pytest.raises(GatewayKeyError, match="not an Ed25519"):
        load_private_key(ec_path)
    junk = tmp_path / "junk.key"
    junk.write_bytes(b"not a key")
    junk.chmod(0o600)
    with pytest.raises(GatewayKeyError, match="not a PEM"):
        load_private_key(junk)
    with pytest.raises(GatewayKeyError, match="cannot read"):
        load_private_key(tmp_path / "missing.key")


def test_public_key_base64_round_trip_and_validation() -> None:
    key = generate_private_key()
    text = public_key_b64(key)
    assert len(base64.b64decode(text)) == 32
    assert parse_public_key_b64(text) == public_key_bytes(key)
    for bad in [
        "",
        "!!!",
        base64.b64encode(b"short").decode(),
        base64.b64encode(bytes(33)).decode(),
        "é",
    ]:
        with pytest.raises(ValueError):
            parse_public_key_b64(bad)
