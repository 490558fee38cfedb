"""Configuration files -> frozen dataclasses, checked once where they are read.

Training presets, a weights folder's ``model.json`` and the findings and post-processing
thresholds each have a dataclass next to the code that uses it; :func:`read_config` builds one
from JSON and refuses what does not fit, so a typo in a key or a quoted number is an error
naming the file and the key when the file is loaded, not a ``KeyError`` (or a silently
ignored setting) somewhere in the middle of a training run. The rules:

* the JSON object has exactly the dataclass's fields: every field without a default present,
  no key the dataclass does not name -- except in a dataclass with an :func:`other_keys` field,
  which collects them (a format that other writers extend);
* an ``about`` key is documentation, dropped at every level;
* a field's value has its annotated type: ``bool``, ``int``, ``float`` (an int is fine), ``str``,
  ``list[T]``, ``tuple[T, ...]`` and ``tuple[A, B]`` (JSON lists, stored as tuples),
  ``dict`` / ``dict[str, T]``, ``T | None``, or another dataclass (built the same way);
  a bare ``list`` or ``dict`` is taken as written.

Every fault is a :class:`ConfigError` naming the file and the key path
(``configs/training/x.json: fusion.patch: expected int, got "48"``). Bad *input studies* are
:class:`lumbarseg.io.study.StudyError`; this is the error for the project's own settings.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
ABOUT = "about"  # documentation in a configuration file, never a setting
_OTHER_KEYS = "lumbarseg.config.other_keys"  # field metadata marking the field of other_keys()


class ConfigError(ValueError):
    """A configuration file that cannot be used. ``path`` names the file (or the preset name
    asked for), ``reason`` says what is wrong, with the key path when one key is at fault."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def other_keys() -> Any:
    """A ``dict`` field that keeps the keys its dataclass does not name, instead of refusing
    them: for a file that other writers extend (``model.json`` keeps a model's training record)."""
    return dataclasses.field(default_factory=dict, metadata={_OTHER_KEYS: True})


def read_config(cls: type[T], source: str | Path | dict, where: str | Path | None = None) -> T:
    """``cls`` (a dataclass) from a JSON file, or from a dict already read (``where`` names it in
    errors); see the module doc for what is checked."""
    if isinstance(source, dict):
        return _build(cls, source, (str(where or "configuration"), ""))
    path = Path(source)
    try:
        data = json.loads(path.read_text())
    except OSError as err:
        raise ConfigError(path, f"cannot read: {err.strerror or err}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(path, f"not a JSON file ({err})") from None
    return _build(cls, data, (str(path) if where is None else str(where), ""))


def dump_config(obj: Any) -> Any:
    """The JSON-ready form of a dataclass built by :func:`read_config` (tuples as lists, the
    :func:`other_keys` field's keys back among the others): ``read_config`` of it is ``obj``."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if f.metadata.get(_OTHER_KEYS):
                out.update(value)
            else:
                out[f.name] = dump_config(value)
        return out
    if isinstance(obj, (list, tuple)):
        return [dump_config(v) for v in obj]
    if isinstance(obj, dict):
        return {k: dump_config(v) for k, v in obj.items()}
    return obj


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _key(at: tuple[str, str], key: str | int) -> tuple[str, str]:
    file, path = at
    if isinstance(key, int):
        return file, f"{path}[{key}]"
    return file, f"{path}.{key}" if path else key


def _fail(at: tuple[str, str], reason: str) -> ConfigError:
    file, path = at
    return ConfigError(file, f"{path}: {reason}" if path else reason)


def _shown(value: Any) -> str:
    """A value as an error shows it: JSON, cut short (a list or object by its kind only)."""
    if isinstance(value, (list, dict)):
        return "a list" if isinstance(value, list) else "an object"
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def _build(cls: type[T], data: Any, at: tuple[str, str]) -> T:
    if not isinstance(data, dict):
        raise _fail(at, f"expected an object, got {_shown(data)}")
    fields = dataclasses.fields(cls)
    rest = next((f.name for f in fields if f.metadata.get(_OTHER_KEYS)), None)
    named = [f.name for f in fields if f.name != rest]
    data = {k: v for k, v in data.items() if k != ABOUT}
    missing = [f.name for f in fields if f.name in named and f.name not in data
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(at[0], "missing " + ", ".join(_key(at, k)[1] for k in missing))
    unknown = [k for k in data if k not in named]
    if unknown and rest is None:
        raise ConfigError(at[0], f"unknown {', '.join(_key(at, k)[1] for k in unknown)} "
                                 f"({at[1] or 'the file'} takes {', '.join(named)})")
    hints = _hints(cls)
    values: dict[str, Any] = {k: _value(hints[k], v, _key(at, k)) for k, v in data.items() if k in named}
    if rest is not None:
        values[rest] = {k: data[k] for k in unknown}
    return cls(**values)


def _value(kind: Any, value: Any, at: tuple[str, str]) -> Any:
    """``value`` checked against the annotation ``kind`` (and converted: lists to tuples,
    ints to floats, objects to dataclasses)."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):  # T | None
        if value is None:
            return None
        (kind,) = (a for a in args if a is not type(None))
        return _value(kind, value, at)
    if dataclasses.is_dataclass(kind):
        return _build(kind, value, at)
    expected = origin or kind
    if not _is(value, expected):
        raise _fail(at, f"expected {expected.__name__}, got {_shown(value)}")
    if expected is float:
        return float(value)
    if expected is list and args:
        return [_value(args[0], v, _key(at, i)) for i, v in enumerate(value)]
    if expected is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_value(args[0], v, _key(at, i)) for i, v in enumerate(value))
        if len(value) != len(args):
            raise _fail(at, f"expected {len(args)} items, got {len(value)}")
        return tuple(_value(a, v, _key(at, i)) for i, (a, v) in enumerate(zip(args, value)))
    if expected is dict and args:
        return {k: _value(args[1], v, _key(at, k)) for k, v in value.items() if k != ABOUT}
    return value


def _is(value: Any, expected: type) -> bool:
    """JSON's kinds: a bool is no number, an int is a float, a JSON list is a tuple."""
    if expected in (int, float) and isinstance(value, bool):
        return False
    if expected is float:
        return isinstance(value, (int, float))
    if expected is tuple:
        return isinstance(value, (list, tuple))
    return isinstance(value, expected)
