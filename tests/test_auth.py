"""Job tokens: each process remembers the tokens it verified, and that memory never outlives
a token's expiry nor accepts what was never verified (gateway/auth.py)."""

from __future__ import annotations

import pytest

from gateway.auth import VERIFIED_TOKENS, Auth
from gateway.errors import Unauthorized

SECRET = "auth-test-secret-0123456789abcdef"


class Clock:
    def __init__(self, now: float = 1_800_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_remembered_token_still_expires() -> None:
    clock = Clock()
    auth = Auth(SECRET, [], 3600, clock=clock)
    token, expires = auth.issue("job_a", ttl=60)
    assert auth.principal(token).job_id == "job_a"
    assert auth.principal(token).can("job_a", "retry")
    assert auth._verified.cache_info().hits == 1  # the second use did not verify the signature again
    clock.now = expires + 1
    with pytest.raises(Unauthorized) as err:
        auth.principal(token)
    assert err.value.code == "token_expired"


def test_an_invalid_token_is_refused_every_time_and_never_remembered() -> None:
    auth = Auth(SECRET, [], 3600, clock=Clock())
    token, _ = auth.issue("job_a")
    forged = Auth("another-secret-0123456789abcdefgh", [], 3600, clock=Clock()).issue("job_a")[0]
    for bad in (token[:-2] + ("AA" if not token.endswith("AA") else "BB"), forged, "x" * 2000):
        for _ in range(2):
            with pytest.raises(Unauthorized) as err:
                auth.principal(bad)
            assert err.value.code == "invalid_token"
    assert auth._verified.cache_info().currsize == 0


def test_the_memory_is_bounded_and_scoped_to_its_secret() -> None:
    auth = Auth(SECRET, [], 3600, clock=Clock())
    for i in range(VERIFIED_TOKENS + 10):
        auth.principal(auth.issue(f"job_{i}")[0])
    assert auth._verified.cache_info().currsize == VERIFIED_TOKENS
    token = auth.issue("job_b")[0]
    auth.principal(token)
    with pytest.raises(Unauthorized):  # another app, another secret: nothing carried over
        Auth("rotated-secret-0123456789abcdefghij", [], 3600, clock=Clock()).principal(token)


def test_a_wrong_api_key_says_so_and_a_damaged_token_says_token() -> None:
    auth = Auth(SECRET, ["the-right-api-key-0123"], 3600, clock=Clock())
    token, _ = auth.issue("job_a")
    for wrong in ("the-wrong-api-key-0123", "sk.live.with.dots", "the-right-api-key-012"):
        with pytest.raises(Unauthorized) as err:
            auth.principal(wrong)
        assert err.value.code == "invalid_api_key" and "API key" in err.value.message, wrong
        assert "token" not in err.value.message
    with pytest.raises(Unauthorized) as err:
        auth.principal(token[:-2] + ("AA" if not token.endswith("AA") else "BB"))
    assert err.value.code == "invalid_token"


def test_the_api_answers_a_wrong_key_in_the_contracts_shape(client) -> None:
    r = client.post("/api/jobs", json={"source": "worker", "external_id": "x"}, headers={"Authorization": "Bearer not-a-key"})
    assert r.status_code == 401
    assert r.get_json() == {"error": {"code": "invalid_api_key", "message": r.get_json()["error"]["message"]}}
    assert "unknown API key" in r.get_json()["error"]["message"]
