"""Both wire APIs answer in the providers' real shapes and refuse what the real APIs refuse."""

from __future__ import annotations

import httpx

from sim.process import SimProcess
from tests.sim.conftest import ANTHROPIC_AUTH, chat, message


def test_openai_chat_completion_has_the_real_shape(http: httpx.Client, sim: SimProcess) -> None:
    r = chat(http, sim, "gpt-4o-mini", "Say hi", max_tokens=50)
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == "gpt-4o-mini" and isinstance(body["created"], int)
    (choice,) = body["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"].endswith(tuple("0123456789"))
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_openai_without_bearer_key_is_401_in_openai_error_shape(http: httpx.Client, sim: SimProcess) -> None:
    r = http.post(f"{sim.openai_base}/chat/completions", json={"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_api_key"
    assert sim.stats()["models"]["gpt-4o"]["by_status"] == {"401": 1}


def test_anthropic_message_has_the_real_shape_with_top_level_system(http: httpx.Client, sim: SimProcess) -> None:
    r = message(http, sim, "claude-3-5-haiku-20241022", "What is the capital? A) Paris B) Rome", system="Answer with a letter.")
    assert r.status_code == 200
    body = r.json()
    assert body["type"] == "message" and body["role"] == "assistant" and body["id"].startswith("msg_")
    assert body["model"] == "claude-3-5-haiku-20241022" and body["stop_reason"] == "end_turn"
    assert body["content"][0]["type"] == "text" and body["content"][0]["text"] in ("A", "B")
    assert body["usage"]["input_tokens"] > 0 and body["usage"]["output_tokens"] == 1
    # the registry's remote_model resolves to the registry name in stats
    assert sim.stats()["models"]["claude-3-5-haiku"]["answered"] == 1


def test_anthropic_requires_key_version_and_max_tokens(http: httpx.Client, sim: SimProcess) -> None:
    url = f"{sim.anthropic_base}/v1/messages"
    body = {"model": "claude-3-5-sonnet", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    no_key = http.post(url, json=body, headers={"anthropic-version": "2023-06-01"})
    assert no_key.status_code == 401 and no_key.json() == {
        "type": "error", "error": {"type": "authentication_error", "message": "x-api-key header is required"}}
    no_version = http.post(url, json=body, headers={"x-api-key": "k"})
    assert no_version.status_code == 400 and no_version.json()["error"]["type"] == "invalid_request_error"
    no_max = http.post(url, json={k: v for k, v in body.items() if k != "max_tokens"}, headers=ANTHROPIC_AUTH)
    assert no_max.status_code == 400 and "max_tokens" in no_max.json()["error"]["message"]
    system_in_messages = http.post(url, json=body | {"messages": [{"role": "system", "content": "s"}]}, headers=ANTHROPIC_AUTH)
    assert system_in_messages.status_code == 400


def test_max_tokens_cuts_the_reply_and_says_so(http: httpx.Client, sim: SimProcess) -> None:
    sim.configure({"models": {"gpt-4o": {"answer": "word " * 40}}})
    r = chat(http, sim, "gpt-4o", "talk", max_tokens=5).json()
    assert r["choices"][0]["finish_reason"] == "length" and r["usage"]["completion_tokens"] == 5
    a = message(http, sim, "gpt-4o", "talk", max_tokens=5).json()
    assert a["stop_reason"] == "max_tokens" and a["usage"]["output_tokens"] == 5
