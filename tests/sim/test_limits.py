"""Enforced rpm/tpm: a sliding 60 s window, 429 with a Retry-After that frees capacity, and the
providers' rate-limit headers."""

from __future__ import annotations

import httpx

from sim.limits import SlidingWindow, retry_after_header
from sim.process import SimProcess
from tests.sim.conftest import chat, message


def test_rpm_over_the_limit_is_429_with_retry_after_near_a_minute(http: httpx.Client, sim: SimProcess) -> None:
    sim.configure({"models": {"gpt-4o-mini": {"rpm": 3}}})
    ok = [chat(http, sim, "gpt-4o-mini", f"q{i}") for i in range(3)]
    assert [r.status_code for r in ok] == [200, 200, 200]
    assert [r.headers["x-ratelimit-remaining-requests"] for r in ok] == ["2", "1", "0"]
    assert ok[0].headers["x-ratelimit-limit-requests"] == "3"
    over = chat(http, sim, "gpt-4o-mini", "q4")
    assert over.status_code == 429 and over.json()["error"]["code"] == "rate_limit_exceeded"
    assert 55 <= int(over.headers["retry-after"]) <= 60
    a = message(http, sim, "gpt-4o-mini", "q5")
    assert a.status_code == 429 and a.json()["error"]["type"] == "rate_limit_error"
    assert a.headers["anthropic-ratelimit-requests-remaining"] == "0"
    m = sim.stats()["models"]["gpt-4o-mini"]
    assert m["rate_limited"] == 2 and m["answered"] == 3 and m["requests"] == 5


def test_tpm_counts_prompt_and_completion_tokens(http: httpx.Client, sim: SimProcess) -> None:
    sim.configure({"models": {"gpt-4o": {"tpm": 25, "answer": "B"}}})  # each call: 3 in + 1 out
    statuses = [chat(http, sim, "gpt-4o", "x" * 12).status_code for _ in range(8)]
    assert statuses == [200] * 6 + [429] * 2
    assert sim.stats()["models"]["gpt-4o"]["tokens_in"] == 18


def test_limits_are_per_model_and_reset_clears_them(http: httpx.Client, sim: SimProcess) -> None:
    sim.configure({"default": {"rpm": 1}})
    assert chat(http, sim, "gpt-4o", "q").status_code == 200
    assert chat(http, sim, "llama3.1-8b", "q").status_code == 200
    assert chat(http, sim, "gpt-4o", "q").status_code == 429
    sim.reset()
    sim.configure({"default": {"rpm": 1}})
    assert chat(http, sim, "gpt-4o", "q").status_code == 200


def test_sliding_window_frees_capacity_as_the_oldest_request_ages_out() -> None:
    w = SlidingWindow()
    assert w.admit(0.0, 10, rpm=2, tpm=None).ok
    assert w.admit(10.0, 10, rpm=2, tpm=None).ok
    denied = w.admit(20.0, 10, rpm=2, tpm=None)
    assert not denied.ok and denied.retry_after_s == 40.0  # the request at t=0 leaves at t=60
    assert w.admit(60.0, 10, rpm=2, tpm=None).ok
    assert not w.admit(61.0, 10, rpm=2, tpm=None).ok  # no fixed-minute edge: t=10 and t=60 still count


def test_token_retry_after_waits_until_enough_tokens_age_out() -> None:
    w = SlidingWindow()
    w.admit(0.0, 60, rpm=None, tpm=100)
    w.admit(30.0, 30, rpm=None, tpm=100)
    denied = w.admit(40.0, 50, rpm=None, tpm=100)
    assert not denied.ok and denied.retry_after_s == 20.0  # 60 tokens leave at t=60, then 50 fit
    assert denied.remaining_tokens == 10
    assert retry_after_header(0.2) == "1" and retry_after_header(20.0) == "20" and retry_after_header(20.1) == "21"
