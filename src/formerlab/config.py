"""Typed, kind-tagged configs: dataclasses in, plain dicts / YAML / JSON out.

A config is a ``@dataclass(kw_only=True)`` subclass of :class:`BaseConfig`. Fields are int, float, bool,
str, None, lists of those, ``Literal`` choices, or nested configs. A field whose type is a
:class:`KindConfig` base (``attention: AttentionConfig``) is polymorphic: the dict's ``kind`` picks the
registered subclass, so ``{"kind": "softmax", "dropout": 0.1}`` becomes ``SoftmaxAttentionConfig``.

Every error is a :class:`~formerlab.errors.ConfigError` that names the full field path, the bad value
and what is allowed. ``to_dict(from_dict(d)) == d`` holds for every complete dict.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar, get_args, get_origin

import yaml

from .errors import ConfigError

C = TypeVar("C", bound="BaseConfig")


def param(default: Any = MISSING, *, doc: str = "", factory: Any = MISSING) -> Any:
    """A config field with a documentation string (shown by ``formerlab info`` and ``describe``)."""
    return field(default=default, default_factory=factory, metadata={"doc": doc})


def join(path: str, name: str | int) -> str:
    if isinstance(name, int):
        return f"{path}[{name}]"
    return f"{path}.{name}" if path else name


def _type_name(hint: Any) -> str:
    origin = get_origin(hint)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(hint))
    if origin in (types.UnionType, typing.Union):
        return " | ".join(_type_name(a) for a in get_args(hint))
    if origin is list:
        return f"list[{_type_name(get_args(hint)[0])}]"
    if hint is type(None):
        return "null"
    if isinstance(hint, type) and issubclass(hint, KindConfig) and not hint.kind:
        return f"{{kind: <{hint.group}>, ...}}"
    return getattr(hint, "__name__", str(hint))


def _fail(path: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"{path}: invalid value {value!r}; allowed: {allowed}")


def _coerce_scalar(hint: type, value: Any, path: str) -> Any:
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
    elif hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    elif hint is Any:
        return value
    raise _fail(path, value, _type_name(hint))


def coerce(hint: Any, value: Any, path: str) -> Any:
    """Check ``value`` against a type hint, converting where unambiguous (``"1e-3"`` → float)."""
    origin = get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        options = get_args(hint)
        if value is None:
            if type(None) in options:
                return None
            raise _fail(path, value, _type_name(hint))
        configs = [o for o in options if isinstance(o, type) and issubclass(o, BaseConfig)]
        if isinstance(value, Mapping) and len(configs) == 1:
            return configs[0].from_dict(value, path)  # its own error names the nested field
        for option in (o for o in options if o is not type(None)):
            try:
                return coerce(option, value, path)
            except ConfigError:
                continue
        raise _fail(path, value, _type_name(hint))
    if origin is Literal:
        if value in get_args(hint):
            return value
        raise _fail(path, value, _type_name(hint))
    if origin is list:
        if not isinstance(value, list | tuple):
            raise _fail(path, value, _type_name(hint))
        (item,) = get_args(hint)
        return [coerce(item, v, join(path, i)) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise _fail(path, value, "a mapping")
        _, item = get_args(hint)
        return {str(k): coerce(item, v, join(path, str(k))) for k, v in value.items()}
    if isinstance(hint, type) and issubclass(hint, BaseConfig):
        return hint.from_dict(value, path)
    return _coerce_scalar(hint, value, path)


def _to_plain(value: Any) -> Any:
    if isinstance(value, BaseConfig):
        return value.to_dict()
    if isinstance(value, list | tuple):
        return [_to_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    return value


_HINTS: dict[type, dict[str, Any]] = {}


def field_hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


_KIND_DEFAULTS: dict[type, dict[str, str]] = {}


def _kind_defaults(cls: type) -> dict[str, str]:
    """Field name -> kind of its default, for fields whose default is a kind-tagged config."""
    if cls in _KIND_DEFAULTS:
        return _KIND_DEFAULTS[cls]
    out = _KIND_DEFAULTS[cls] = {}
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        if isinstance(default, KindConfig):
            out[f.name] = default.kind
    return out


@dataclass(kw_only=True)
class BaseConfig:
    """Plain typed data. Subclasses add fields and may override :meth:`validate`."""

    @classmethod
    def from_dict(cls: type[C], data: Any, path: str = "") -> C:
        if isinstance(data, cls):
            return data
        if not isinstance(data, Mapping):
            raise _fail(path or cls.__name__, data, f"a mapping of {cls.__name__} fields")
        data = dict(data)
        if issubclass(cls, KindConfig):
            data.pop("kind", None)  # checked by KindConfig.from_dict before we get here
        valid = [f.name for f in dataclasses.fields(cls) if f.init]
        for name in data:
            if name not in valid:
                raise ConfigError(
                    f"{join(path, name)}: unknown field for {cls.label()}; "
                    f"valid fields: {', '.join(valid) or '(none)'}"
                )
        hints = field_hints(cls)
        defaults = _kind_defaults(cls)
        kwargs = {}
        for name, value in data.items():
            if isinstance(value, Mapping) and "kind" not in value and name in defaults:
                value = {
                    "kind": defaults[name],
                    **value,
                }  # a partial section keeps the default kind
            kwargs[name] = coerce(hints[name], value, join(path, name))
        for f in dataclasses.fields(cls):
            if (
                f.init
                and f.name not in kwargs
                and f.default is MISSING
                and f.default_factory is MISSING
            ):
                raise ConfigError(
                    f"{join(path, f.name)}: required field of {cls.label()} is missing"
                )
        obj = cls(**kwargs)
        obj.validate(path)
        return obj

    @classmethod
    def label(cls) -> str:
        return cls.__name__

    def validate(self, path: str = "") -> None:
        """Cross-field rules; raise ConfigError naming ``join(path, field)``."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _to_plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def replace(self: C, **changes: Any) -> C:
        """A copy with some fields changed, validated like a fresh config."""
        return type(self).from_dict({**self.to_dict(), **_to_plain(changes)})

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


@dataclass(kw_only=True)
class KindConfig(BaseConfig):
    """A config for one registered implementation of a group (``kind`` picks it)."""

    group: ClassVar[str] = ""
    kind: ClassVar[str] = ""

    @classmethod
    def label(cls) -> str:
        return f"{cls.group} kind {cls.kind!r}" if cls.kind else f"{cls.group} config"

    @classmethod
    def from_dict(cls: type[C], data: Any, path: str = "") -> C:
        if isinstance(data, cls):
            return data
        if isinstance(data, str):  # shorthand: `norm: rmsnorm`
            data = {"kind": data}
        if not isinstance(data, Mapping):
            raise _fail(path or cls.__name__, data, f"a mapping with a 'kind' ({cls.group})")
        kind = data.get("kind", cls.kind or None)
        if kind is None:
            from .registry import get_registry

            names = ", ".join(get_registry(cls.group).names())
            raise ConfigError(
                f"{join(path, 'kind')}: missing; registered {cls.group} kinds: {names}"
            )
        target = cls
        if kind != cls.kind:
            from .registry import get_registry

            target = get_registry(cls.group).config_class(kind, join(path, "kind"))
            if not issubclass(target, cls):
                raise ConfigError(f"{join(path, 'kind')}: {kind!r} is not a {cls.__name__}")
        return BaseConfig.from_dict.__func__(target, data, path)  # type: ignore[attr-defined]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **super().to_dict()}


# ---------------------------------------------------------------------------------------------
# Files, `base:` inheritance and "a.b=c" overrides (all on plain dicts, before typing)


def read_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: cannot parse: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``over`` into a copy of ``base``; a section whose ``kind`` changes is replaced whole."""
    out = dict(base)
    for key, value in over.items():
        old = out.get(key)
        same_kind = isinstance(old, dict) and isinstance(value, Mapping)
        if same_kind and value.get("kind", old.get("kind")) == old.get("kind"):
            out[key] = deep_merge(old, value)
        else:
            out[key] = value
    return out


def load_with_base(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a run file, resolving ``base: other.yaml`` (relative to the file) recursively."""
    path = Path(path).resolve()
    if path in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, path))
        raise ConfigError(f"base: circular inheritance {cycle}")
    data = read_file(path)
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise _fail(f"{path}: base", base, "a path to another YAML file")
    return deep_merge(load_with_base(path.parent / base, (*_chain, path)), data)


def parse_override(item: str) -> tuple[list[str], Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. model.depth=2")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``a.b=c`` overrides to a plain dict (values parsed as YAML, typed later by from_dict).

    Setting a section's ``kind`` to a new value resets that section to the new kind's defaults.
    """
    data = json.loads(json.dumps(data))  # deep copy of plain data
    for item in overrides:
        parts, value = parse_override(item)
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif isinstance(child, str):
                child = node[part] = {"kind": child}
            elif not isinstance(child, dict):
                where = ".".join(parts[: i + 1])
                raise ConfigError(f"override {item!r}: {where} is {child!r}, not a section")
            node = child
        last = parts[-1]
        if last == "kind" and node.get("kind") not in (None, value):
            node.clear()
        node[last] = value
    return data
