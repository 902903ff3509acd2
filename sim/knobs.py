"""Per-model knobs (latency, faults, limits, batch timing) and the layered config that sets them.

Layers, later wins: built-in defaults < `default` < `models["*"]` < `models[name]`. The start
config comes from `--config`; `POST /_sim/config` merges over it; reset restores it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

# A typo in a knob name would silently do nothing; every layer is checked against these.
FAULT_RATES = ("rate_429", "rate_500", "rate_502", "rate_503", "rate_timeout",
               "rate_malformed", "rate_truncated", "rate_empty_choices")  # fmt: skip


class ConfigError(ValueError):
    """A config layer names an unknown knob or gives a value of the wrong type."""


@dataclass(frozen=True)
class Knobs:
    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    latency_mode: Literal["fixed", "recorded"] = "fixed"
    latency_scale: float = 1.0  # applied to a replay row's latency_ms in `recorded` mode
    skill: float = 0.8  # probability the deterministic rule gives the "true" answer
    answer: str | None = None  # scripted reply text: fixes a member's vote or an arbiter's verdict
    logprob: float | None = None  # scripted sequence log-probability (served when a request asks)
    rate_429: float = 0.0
    retry_after_s: float = 1.0
    omit_retry_after: bool = False  # some gateways send a bare 429; clients must still back off
    rate_500: float = 0.0
    rate_502: float = 0.0
    rate_503: float = 0.0
    rate_timeout: float = 0.0
    hang_s: float = 30.0  # a timeout fault holds the connection this long, then drops it
    rate_malformed: float = 0.0
    rate_truncated: float = 0.0
    rate_empty_choices: float = 0.0
    down: bool = False
    fail_next: int = 0  # consumed by calls; kept as a counter in `KnobStore`, not read from here
    fail_status: int = 503
    rpm: int | None = None
    tpm: int | None = None
    batch_delay_s: float = 2.0
    batch_line_error_rate: float = 0.0
    batch_expire: bool = False
    batch_shuffle: bool = False  # result lines in a seeded random order, as real batches may return them


KNOB_NAMES = frozenset(f.name for f in fields(Knobs))
_TYPES: dict[str, tuple[type, ...]] = {
    f.name: (str, type(None)) if f.name == "answer"
    else (int, type(None)) if f.name in ("rpm", "tpm")
    else (int, float, type(None)) if f.name == "logprob"
    else (bool,) if isinstance(f.default, bool)
    else (int,) if isinstance(f.default, int)
    else (str,) if isinstance(f.default, str)
    else (int, float)
    for f in fields(Knobs)
}  # fmt: skip


def check_layer(layer: dict[str, Any], where: str) -> dict[str, Any]:
    unknown = set(layer) - KNOB_NAMES
    if unknown:
        raise ConfigError(f"{where}: unknown knob(s) {sorted(unknown)}; known: {sorted(KNOB_NAMES)}")
    for name, value in layer.items():
        ok = _TYPES[name]
        # bool is an int in Python; a `true` for a rate or a count is a mistake worth naming
        if not isinstance(value, ok) or (isinstance(value, bool) and bool not in ok):
            raise ConfigError(f"{where}.{name}: {value!r} is not {' or '.join(t.__name__ for t in ok)}")
    if layer.get("latency_mode", "fixed") not in ("fixed", "recorded"):
        raise ConfigError(f"{where}.latency_mode: must be 'fixed' or 'recorded'")
    return layer


def check_config(config: dict[str, Any]) -> dict[str, Any]:
    """Validate `{"default": {...}, "models": {name: {...}}}`; returns it for chaining."""
    unknown = set(config) - {"default", "models"}
    if unknown:
        raise ConfigError(f"config: unknown key(s) {sorted(unknown)}; expected 'default' and 'models'")
    check_layer(config.get("default") or {}, "default")
    for name, layer in (config.get("models") or {}).items():
        check_layer(layer or {}, f"models.{name}")
    return config


class KnobStore:
    """The start config, the runtime merges over it, and the `fail_next` counters they set.

    Model names in config are resolved through `resolve` (aliases), so a test may configure
    either the registry name or the provider's model id.
    """

    def __init__(self, start: dict[str, Any], base: Knobs, resolve: Any = lambda m: m) -> None:
        self._resolve = resolve
        self._base = base
        self._start = self._normalise(check_config(start))
        self.reset()

    def _normalise(self, config: dict[str, Any]) -> dict[str, dict[str, Any]]:
        layers: dict[str, dict[str, Any]] = {"*": dict(config.get("default") or {})}
        for name, layer in (config.get("models") or {}).items():
            key = "*" if name == "*" else self._resolve(name)
            layers.setdefault(key, {}).update(layer or {})
        return layers

    def reset(self) -> None:
        self._layers = copy.deepcopy(self._start)
        self._fail_next: dict[str, int] = {}
        for key, layer in self._layers.items():
            count = layer.pop("fail_next", 0)
            if count:
                self._fail_next[key] = int(count)

    def merge(self, config: dict[str, Any]) -> None:
        for key, layer in self._normalise(check_config(config)).items():
            if "fail_next" in layer:
                self._fail_next[key] = int(layer.pop("fail_next"))
            self._layers.setdefault(key, {}).update(layer)

    def for_model(self, model: str) -> Knobs:
        return replace(self._base, **{**self._layers.get("*", {}), **self._layers.get(model, {})})

    def take_fail_next(self, model: str) -> bool:
        """Consume one scripted failure for `model` (its own counter first, then the `*` one)."""
        for key in (model, "*"):
            if self._fail_next.get(key, 0) > 0:
                self._fail_next[key] -= 1
                return True
        return False

    def snapshot(self) -> dict[str, Any]:
        return {"layers": copy.deepcopy(self._layers), "fail_next": dict(self._fail_next)}
