"""Keys come from the environment only and never show in a repr, a str or an error message."""

from __future__ import annotations

import httpx
import pytest

from workers.providers import (
    AnthropicBatches,
    AnthropicMessages,
    ChatRequest,
    InputRejected,
    OpenAIBatches,
    OpenAIChat,
    ProviderError,
    ProviderUnavailable,
    make_provider,
)
from workers.registry import ProviderSpec

pytestmark = pytest.mark.anyio
CANARY = "sk-CANARY-4f1d9a7e0b3c"
REQUEST = ChatRequest(model="m", messages=[{"role": "user", "content": "hi"}])


def spec(api: str) -> ProviderSpec:
    return ProviderSpec.model_validate(
        {
            "api": api,
            "base_url_env": "TEST_BASE_URL",
            "key_env": "TEST_API_KEY",
            "default_base_url": "https://real.invalid/v1",
        }
    )


def echo_key_back(status: int) -> httpx.MockTransport:
    """A provider that quotes the key it was sent in its error message, as some gateways do."""

    def handler(request: httpx.Request) -> httpx.Response:
        sent = request.headers.get("authorization", "") + request.headers.get("x-api-key", "")
        assert CANARY in sent  # the canary is live: the key really goes out
        return httpx.Response(status, json={"error": {"message": f"Incorrect API key provided: {sent}"}})

    return httpx.MockTransport(handler)


@pytest.mark.parametrize("cls", [OpenAIChat, AnthropicMessages])
@pytest.mark.parametrize("status", [401, 429, 503])
async def test_the_key_never_shows_in_reprs_or_errors(cls: type[OpenAIChat], status: int) -> None:
    client = cls("p", "https://provider.test/v1", CANARY, transport=echo_key_back(status))
    assert CANARY not in repr(client) and CANARY not in str(client)
    with pytest.raises(ProviderError) as caught:
        await client.complete(REQUEST)
    assert "Incorrect API key" in str(caught.value)
    for text in (str(caught.value), repr(caught.value), repr(caught.value.args)):
        assert CANARY not in text


@pytest.mark.parametrize("cls", [OpenAIBatches, AnthropicBatches])
def test_batch_clients_keep_the_key_out_of_their_repr(cls: type[OpenAIBatches]) -> None:
    client = cls("p", "https://provider.test", CANARY)
    assert CANARY not in repr(client) and CANARY not in str(client)


def test_a_password_in_the_base_url_stays_out_of_the_repr() -> None:
    assert (
        repr(OpenAIChat("p", "https://user:hunter2@gw.test/v1", None))
        == "OpenAIChat(name='p', base_url='https://gw.test/v1')"
    )


async def test_transport_errors_carry_no_key() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"refused {request.headers['authorization']}", request=request)

    client = OpenAIChat("p", "http://provider.test/v1", CANARY, transport=httpx.MockTransport(handler))
    with pytest.raises(ProviderUnavailable) as caught:
        await client.complete(REQUEST)
    assert CANARY not in str(caught.value)


@pytest.mark.parametrize(("api", "cls"), [("openai", OpenAIChat), ("anthropic", AnthropicMessages)])
async def test_make_provider_picks_the_class_by_api_and_reads_env(
    monkeypatch: pytest.MonkeyPatch, api: str, cls: type
) -> None:
    monkeypatch.setenv("TEST_API_KEY", CANARY)
    monkeypatch.setenv("TEST_BASE_URL", "http://127.0.0.1:9/v1")
    async with httpx.AsyncClient() as http:
        provider = make_provider("p", spec(api), http)
        assert isinstance(provider, cls) and provider.name == "p"
        assert CANARY not in repr(provider) and "127.0.0.1:9" in repr(provider)
        await provider.aclose()
        assert not http.is_closed  # the shared pool belongs to the process, not to one client


async def test_make_provider_refuses_a_real_endpoint_without_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_API_KEY", raising=False)
    monkeypatch.delenv("TEST_BASE_URL", raising=False)
    async with httpx.AsyncClient() as http:
        with pytest.raises(ProviderError, match="set TEST_API_KEY") as caught:
            make_provider("p", spec("openai"), http)
        assert not caught.value.retryable
        monkeypatch.setenv("TEST_BASE_URL", "http://127.0.0.1:9/v1")  # a local server may be keyless
        assert isinstance(make_provider("p", spec("openai"), http), OpenAIChat)


async def test_a_keyless_client_sends_no_auth_header() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(400, json={"error": {"message": "x"}})

    transport = httpx.MockTransport(handler)
    with pytest.raises(InputRejected):
        await OpenAIChat("p", "http://local.test/v1", None, transport=transport).complete(REQUEST)
    assert "authorization" not in seen[0].headers
