"""Model aliases from the registry (`policies/models.yaml`): a provider's model id resolves to the
registry name, so knobs, replay rows and stats are all keyed by one name per model.
"""

from __future__ import annotations

from pathlib import Path

import yaml


class Aliases:
    """`resolve("accounts/fireworks/models/llama-v3p1-70b-instruct") == "llama3.1-70b"`.

    Names the registry does not know pass through unchanged: the simulator serves any model.
    """

    def __init__(self, mapping: dict[str, str] | None = None) -> None:
        self._to_name = dict(mapping or {})

    @classmethod
    def from_registry(cls, path: Path) -> Aliases:
        doc = yaml.safe_load(path.read_text()) or {}
        mapping: dict[str, str] = {}
        for name, entry in (doc.get("models") or {}).items():
            mapping[name] = name
            remote = (entry or {}).get("remote_model")
            if remote:
                mapping[str(remote)] = name
        return cls(mapping)

    def resolve(self, model: str) -> str:
        return self._to_name.get(model, model)
