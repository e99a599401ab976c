"""Name → implementation registries, one per group, keyed by the config's ``kind``.

    @ATTENTION.register(SoftmaxAttentionConfig)
    class SoftmaxAttention(Attention): ...

    ATTENTION.build(cfg, dim=256, num_heads=4, ...)   # shapes come from the parent (DESIGN rule 3)

Registering a part is enough for it to be listed by ``formerlab info``, described by
``formerlab.describe`` and exercised by the contract tests.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from dataclasses import dataclass
from typing import Any

from .config import KindConfig, _type_name, field_hints
from .errors import ConfigError, FormerlabError

GROUPS = (
    "attention",
    "norm",
    "ffn",
    "linear",
    "position",
    "embedding",
    "model",
    "head",
    "task",
    "optimizer",
    "schedule",
    "tokenizer",
    "claim",
    "transform",
)

# Importing these modules registers every built-in part.
_BUILTIN_MODULES = (
    "formerlab.layers",
    "formerlab.models",
    "formerlab.tokenizers",
    "formerlab.tasks",
    "formerlab.train",
    "formerlab.transforms",
    "formerlab.claims",
)


@dataclass(frozen=True)
class Entry:
    kind: str
    config_class: type[KindConfig]
    impl: Any


class Registry:
    """The registered implementations of one group."""

    def __init__(self, group: str) -> None:
        self.group = group
        self._entries: dict[str, Entry] = {}

    def register(self, config_class: type[KindConfig]):
        """Class/function decorator registering ``impl`` under ``config_class.kind``."""
        kind = config_class.kind
        if not kind:
            raise FormerlabError(f"{config_class.__name__} has no `kind` to register under")
        if config_class.group != self.group:
            raise FormerlabError(
                f"{config_class.__name__}.group is {config_class.group!r}, "
                f"cannot register it in {self.group!r}"
            )
        if kind in self._entries:
            raise FormerlabError(f"{self.group} kind {kind!r} is already registered")

        def decorator(impl: Any) -> Any:
            self._entries[kind] = Entry(kind, config_class, impl)
            return impl

        return decorator

    def names(self) -> list[str]:
        load_builtins()
        return sorted(self._entries)

    def entry(self, kind: str, path: str = "kind") -> Entry:
        load_builtins()
        if kind not in self._entries:
            raise ConfigError(
                f"{path}: unknown {self.group} kind {kind!r}; "
                f"registered: {', '.join(sorted(self._entries)) or '(none)'}"
            )
        return self._entries[kind]

    def config_class(self, kind: str, path: str = "kind") -> type[KindConfig]:
        return self.entry(kind, path).config_class

    def build(self, cfg: KindConfig | dict | str, /, **dims: Any) -> Any:
        """Instantiate the implementation of ``cfg.kind`` as ``impl(cfg, **dims)``."""
        if not isinstance(cfg, KindConfig):
            cfg = self.config_class(cfg if isinstance(cfg, str) else cfg.get("kind", "")).from_dict(
                cfg
            )
        return self.entry(cfg.kind).impl(cfg, **dims)

    def unregister(self, kind: str) -> None:
        """Remove an entry (for tests that register throwaway parts)."""
        self._entries.pop(kind, None)


REGISTRIES: dict[str, Registry] = {g: Registry(g) for g in GROUPS}
ATTENTION = REGISTRIES["attention"]
NORM = REGISTRIES["norm"]
FFN = REGISTRIES["ffn"]
LINEAR = REGISTRIES["linear"]
POSITION = REGISTRIES["position"]
EMBEDDING = REGISTRIES["embedding"]
MODEL = REGISTRIES["model"]
HEAD = REGISTRIES["head"]
TASK = REGISTRIES["task"]
OPTIMIZER = REGISTRIES["optimizer"]
SCHEDULE = REGISTRIES["schedule"]
TOKENIZER = REGISTRIES["tokenizer"]
CLAIM = REGISTRIES["claim"]
TRANSFORM = REGISTRIES["transform"]

_loaded = False


def load_builtins() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in _BUILTIN_MODULES:
            importlib.import_module(module)


def get_registry(group: str) -> Registry:
    if group not in REGISTRIES:
        raise ConfigError(f"group: unknown group {group!r}; groups: {', '.join(GROUPS)}")
    return REGISTRIES[group]


def list_registered(group: str) -> list[str]:
    """Sorted registered names of ``group`` (e.g. ``"attention"``)."""
    return get_registry(group).names()


def describe(group: str, name: str) -> dict[str, Any]:
    """What ``name`` is: its paper, summary, config fields (type, default, doc) and capabilities;
    plus ``extra`` when the implementation defines ``describe_extra(cfg)`` (e.g. parameter counts)."""
    entry = get_registry(group).entry(name)
    impl, cfg_cls = entry.impl, entry.config_class
    hints = field_hints(cfg_cls)
    fields = []
    for f in dataclasses.fields(cfg_cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        if hasattr(default, "to_dict"):
            default = default.to_dict()
        fields.append(
            {
                "name": f.name,
                "type": _type_name(hints[f.name]),
                "default": default,
                "doc": f.metadata.get("doc", ""),
            }
        )
    doc = inspect.getdoc(impl) or inspect.getdoc(cfg_cls) or ""
    capabilities = {k: bool(getattr(impl, k)) for k in dir(impl) if k.startswith("supports_")}
    out = {
        "group": group,
        "kind": name,
        "paper": getattr(impl, "paper", "") or "",
        "summary": doc.split("\n\n")[0].replace("\n", " "),
        "fields": fields,
        "capabilities": capabilities,
    }
    extra = getattr(impl, "describe_extra", None)  # optional: facts about the default config
    if callable(extra):
        out["extra"] = extra(cfg_cls())
    return out
