"""The model registry (policies/models.yaml): providers, prices, limits and fallbacks.

A price lives here and nowhere in code. `Registry.cost(model, tokens_in, tokens_out, batch, cached=...)`
is the one place a call is priced.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from workers import policy_files
from workers.errors import PolicyError

Tier = Literal["economy", "workhorse", "frontier"]
TIERS: tuple[Tier, ...] = ("economy", "workhorse", "frontier")


def policies_dir() -> Path:
    """PANEL_POLICIES if set, else the `policies/` folder beside the packages."""
    env = os.environ.get("PANEL_POLICIES")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "policies"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Price(_Strict):
    input: float = Field(ge=0, description="USD per 1M input tokens")
    output: float = Field(ge=0, description="USD per 1M output tokens")
    # prompt caching: absent means the provider gives no discount (cached tokens at `input`)
    cache_read: float | None = Field(default=None, ge=0, description="USD per 1M input tokens read from the cache")
    cache_write: float | None = Field(default=None, ge=0, description="USD per 1M input tokens written to the cache")

    @model_validator(mode="after")
    def _cache_prices(self) -> Price:
        if self.cache_read is not None and self.cache_read > self.input:
            raise ValueError(f"cache_read: {self.cache_read} is above the input price {self.input}; "
                             "a cache read is billed at a fraction of input, check the digits")  # fmt: skip
        return self

    def input_cost(self, tokens_in: int, cached: int = 0, cache_write: int = 0) -> float:
        """USD per 1M for `tokens_in` input tokens of which `cached` were read from and
        `cache_write` written to the provider's prompt cache."""
        cached, cache_write = min(cached, tokens_in), min(cache_write, max(0, tokens_in - cached))
        plain = tokens_in - cached - cache_write
        read_p = self.input if self.cache_read is None else self.cache_read
        write_p = self.input if self.cache_write is None else self.cache_write
        return plain * self.input + cached * read_p + cache_write * write_p


class ProviderSpec(_Strict):
    api: Literal["openai", "anthropic"]
    base_url_env: str
    key_env: str
    default_base_url: str

    def base_url(self) -> str:
        return os.environ.get(self.base_url_env) or self.default_base_url

    def api_key(self) -> str | None:
        return os.environ.get(self.key_env)


class ModelSpec(_Strict):
    name: str = ""
    provider: str
    remote_model: str | None = None
    tier: Tier
    family: str | None = None  # who trained it (llama, qwen, gpt, claude): `arbiter_family: different`
    price: Price
    batch_price: Price
    rpm: int = Field(gt=0)
    tpm: int = Field(gt=0)
    burst_s: float = Field(default=60.0, gt=0, le=60, description="seconds of rpm/tpm that may go out at once")
    context_window: int = Field(gt=0)
    max_output_tokens: int = Field(default=1024, gt=0)
    fallbacks: list[str] = Field(default_factory=list)

    @property
    def wire_model(self) -> str:
        return self.remote_model or self.name


class Registry(_Strict):
    providers: dict[str, ProviderSpec]
    models: dict[str, ModelSpec]

    @model_validator(mode="before")
    @classmethod
    def _names(cls, data: dict) -> dict:  # type: ignore[type-arg]
        if isinstance(data, dict) and isinstance(data.get("models"), dict):
            data = dict(data)
            data["models"] = {
                k: ({**v, "name": k} if isinstance(v, dict) else v) for k, v in data["models"].items()
            }
        return data

    @model_validator(mode="after")
    def _refs(self) -> Registry:
        for name, m in self.models.items():
            if m.provider not in self.providers:
                raise ValueError(f"models.{name}.provider: {m.provider!r} is not under `providers`")
            for fb in m.fallbacks:
                if fb not in self.models:
                    raise ValueError(f"models.{name}.fallbacks: {fb!r} is not a model in this file")
                if fb == name:
                    raise ValueError(f"models.{name}.fallbacks: a model cannot fall back to itself")
        return self

    def model(self, name: str) -> ModelSpec:
        try:
            return self.models[name]
        except KeyError:
            raise PolicyError("models.yaml", None, "models", f"unknown model {name!r}") from None

    def provider_of(self, name: str) -> ProviderSpec:
        return self.providers[self.model(name).provider]

    def cost(self, name: str, tokens_in: int, tokens_out: int, batch: bool = False,
             cached: int = 0, cache_write: int = 0) -> float:  # fmt: skip
        """`tokens_in` is the whole prompt; `cached`/`cache_write` the parts the provider read
        from / wrote to its prompt cache, each priced at its own rate."""
        m = self.model(name)
        p = m.batch_price if batch else m.price
        return (p.input_cost(tokens_in, cached, cache_write) + tokens_out * p.output) / 1_000_000

    @classmethod
    def load(cls, path: Path | None = None) -> Registry:
        path = path or policies_dir() / "models.yaml"
        data, lines = policy_files.load(path)
        try:
            return policy_files.validate(cls, data, path, lines)
        except PolicyError as e:
            # cross-reference errors come back as "(top): models.x.y: msg"; point at their line
            if e.field == "(top)" and ": " in str(e).split(": ", 2)[-1]:
                field, msg = str(e).split(": ", 2)[-1].split(": ", 1)
                loc = tuple(field.split("."))
                raise PolicyError(str(path), policy_files.line_of(lines, loc), field, msg) from None
            raise
