"""Each fault knob produces its fault, in the wire API's own shape, and seeded sequences repeat."""

from __future__ import annotations

import time

import httpx
import orjson
import pytest

from sim.process import SimProcess
from tests.sim.conftest import REGISTRY, chat, message


def knobs(sim: SimProcess, model: str, **values: object) -> None:
    sim.configure({"models": {model: values}})


def test_rate_429_sends_retry_after_unless_told_to_omit_it(http: httpx.Client, sim: SimProcess) -> None:
    knobs(sim, "gpt-4o", rate_429=1.0, retry_after_s=3)
    r = chat(http, sim, "gpt-4o", "q")
    assert r.status_code == 429 and r.headers["retry-after"] == "3"
    assert r.json()["error"]["code"] == "rate_limit_exceeded"
    a = message(http, sim, "gpt-4o", "q")
    assert a.status_code == 429 and a.json()["error"]["type"] == "rate_limit_error" and a.headers["retry-after"] == "3"
    knobs(sim, "gpt-4o", omit_retry_after=True)
    assert "retry-after" not in chat(http, sim, "gpt-4o", "q").headers
    assert sim.stats()["models"]["gpt-4o"]["rate_limited"] == 3


@pytest.mark.parametrize(("knob", "openai_status", "anthropic_status", "anthropic_type"), [
    ("rate_500", 500, 500, "api_error"),
    ("rate_502", 502, 502, "api_error"),
    ("rate_503", 503, 529, "overloaded_error"),
])  # fmt: skip
def test_server_error_knobs_use_each_apis_status_and_shape(
    http: httpx.Client, sim: SimProcess, knob: str, openai_status: int, anthropic_status: int, anthropic_type: str
) -> None:
    knobs(sim, "llama3.1-8b", **{knob: 1.0})
    r = chat(http, sim, "llama3.1-8b", "q")
    assert r.status_code == openai_status and r.json()["error"]["type"] == "server_error"
    a = message(http, sim, "llama3.1-8b", "q")
    assert a.status_code == anthropic_status and a.json()["type"] == "error" and a.json()["error"]["type"] == anthropic_type


def test_timeout_hangs_then_drops_the_connection(http: httpx.Client, sim: SimProcess) -> None:
    knobs(sim, "gpt-4o", rate_timeout=1.0, hang_s=0.6)
    t0 = time.monotonic()
    with pytest.raises(httpx.RemoteProtocolError):
        chat(http, sim, "gpt-4o", "q").json()
    assert time.monotonic() - t0 >= 0.6
    with httpx.Client(timeout=0.2) as impatient, pytest.raises(httpx.ReadTimeout):
        chat(impatient, sim, "gpt-4o", "q")  # a client with a shorter timeout sees a read timeout
    m = sim.stats()["models"]["gpt-4o"]
    assert m["faults"] == {"timeout": 2} and m["answered"] == 0


def test_malformed_is_a_200_whose_body_is_not_json(http: httpx.Client, sim: SimProcess) -> None:
    knobs(sim, "gpt-4o", rate_malformed=1.0)
    r = chat(http, sim, "gpt-4o", "q")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(r.content)


def test_truncated_body_stops_halfway_through_its_declared_length(http: httpx.Client, sim: SimProcess) -> None:
    knobs(sim, "gpt-4o", rate_truncated=1.0)
    with pytest.raises(httpx.RemoteProtocolError):
        chat(http, sim, "gpt-4o", "q")
    assert sim.stats()["models"]["gpt-4o"]["answered"] == 0


def test_empty_choices_is_a_valid_body_with_nothing_in_it(http: httpx.Client, sim: SimProcess) -> None:
    knobs(sim, "gpt-4o", rate_empty_choices=1.0)
    assert chat(http, sim, "gpt-4o", "q").json()["choices"] == []
    assert message(http, sim, "gpt-4o", "q").json()["content"] == []


def test_down_fails_every_call_and_fail_next_fails_exactly_n(http: httpx.Client, sim: SimProcess) -> None:
    knobs(sim, "gpt-4o", down=True)
    assert [chat(http, sim, "gpt-4o", "q").status_code for _ in range(3)] == [503] * 3
    knobs(sim, "gpt-4o", down=False, fail_next=2, fail_status=500)
    assert [chat(http, sim, "gpt-4o", "q").status_code for _ in range(4)] == [500, 500, 200, 200]
    sim.configure({"default": {"fail_next": 1, "fail_status": 429}})  # `*`: the next call of any model
    r = chat(http, sim, "llama3.1-8b", "q")
    assert r.status_code == 429 and "retry-after" in r.headers
    assert chat(http, sim, "llama3.1-8b", "q").status_code == 200


def test_latency_ms_delays_the_answer(http: httpx.Client, sim: SimProcess) -> None:
    knobs(sim, "gpt-4o", latency_ms=300)
    t0 = time.monotonic()
    assert chat(http, sim, "gpt-4o", "q").status_code == 200
    assert time.monotonic() - t0 >= 0.3
    knobs(sim, "gpt-4o", latency_ms=0)
    assert chat(http, sim, "gpt-4o", "q").status_code == 200
    # Side by side in the simulator's own log: the knob is what held the first answer back
    # (a bound above would measure the machine's load, not the knob).
    delayed, immediate = (row["ended"] - row["started"] for row in sim.requests()[-2:])
    assert delayed >= 0.3 and delayed > immediate


def test_a_seeded_fault_sequence_repeats_in_a_new_process() -> None:
    def sequence(seed: str) -> list[int]:
        with SimProcess(args=["--models", str(REGISTRY), "--seed", seed]) as s, httpx.Client() as http:
            s.configure({"default": {"rate_500": 0.3, "rate_429": 0.2}})
            return [chat(http, s, "gpt-4o", f"q{i}").status_code for i in range(30)]

    first = sequence("5")
    assert first == sequence("5")
    assert {200, 429, 500} == set(first)


def test_unknown_knob_is_refused_by_the_admin_api(sim: SimProcess) -> None:
    r = httpx.post(f"{sim.url}/_sim/config", json={"models": {"gpt-4o": {"rate_4299": 1.0}}})
    assert r.status_code == 400 and "rate_4299" in r.json()["error"]
