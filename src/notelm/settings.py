"""The one validator of every settings dataclass: typed fields with documented defaults.

Every group of settings notelm reads (a TOML preset, a ``--set`` override, a saved
model, a representation's settings, a command line) is a dataclass over
``Settings``, each field made by ``setting(default, doc, ...)``: its type is its
default's type, its doc says what it does, and its bounds or choices sit beside
it.  ``validate()`` checks all of that in one place and names the setting in
every message (``train.steps = 'many': expected an integer``); ``from_dict`` also
refuses unknown keys; ``documentation()`` lists every setting with its default.

This module imports nothing of notelm but ``io``, so that representations,
model families and the run config (``config.py``) can all stand on it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import field
from typing import Any, ClassVar

import numpy as np

from notelm.io import NotelmError


def setting(default, doc: str, *, kind: type | None = None, minimum=None, maximum=None, above=None, below=None,
            choices=None):
    """A dataclass field: its default, what it does, and what the validator accepts.

    ``kind``: the type when the default does not show it (a default of None means "not given");
    ``minimum`` / ``maximum``: inclusive bounds; ``above`` / ``below``: exclusive bounds;
    ``choices``: the allowed values.
    """
    meta = {"doc": doc, "kind": kind or type(default), "minimum": minimum, "maximum": maximum, "above": above,
            "below": below, "choices": tuple(choices) if choices is not None else None}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


_KIND_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a table"}


def _typed(value, kind: type):
    """``value`` as ``kind`` (ints widen to float, numpy scalars to Python), or raise TypeError."""
    is_bool = isinstance(value, (bool, np.bool_))
    if kind is bool and is_bool:
        return bool(value)
    if kind is int and isinstance(value, (int, np.integer)) and not is_bool:
        return int(value)
    if kind is float and isinstance(value, (int, float, np.integer, np.floating)) and not is_bool:
        return float(value)
    if kind not in (bool, int, float) and isinstance(value, kind):
        return value
    raise TypeError


class Settings:
    """Base of every settings dataclass: one validator, documented defaults.

    ``section`` names the settings in messages (``train.steps``); with ``flags = True``
    they are command-line flags instead (``--top-k``).
    """

    section: ClassVar[str] = ""
    flags: ClassVar[bool] = False

    @classmethod
    def label(cls, key: str) -> str:
        if cls.flags:
            return "--" + key.replace("_", "-")
        return f"{cls.section}.{key}" if cls.section else key

    @classmethod
    def from_dict(cls, values: dict):
        """Settings from a dict (a TOML table, a saved JSON object): unknown keys and wrong types are refused."""
        if not isinstance(values, dict):
            raise NotelmError(f"[{cls.section}] must be a table of settings, not {values!r}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise NotelmError(f"unknown {cls.section} setting(s): {', '.join(map(str, unknown))}; "
                              f"valid settings: {', '.join(names)}")
        return cls(**values).validate()

    def validate(self):
        """Check every field's type, bounds and choices, then ``check()``; returns self."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            meta = f.metadata
            if value is None and f.default is None:
                continue  # an optional setting left out
            try:
                value = _typed(value, meta.get("kind", type(value)))
            except TypeError:
                kind = meta["kind"]
                expected = _KIND_NAMES.get(kind, kind.__name__)
                raise NotelmError(f"{self.label(f.name)} = {value!r}: expected {expected}") from None
            if isinstance(value, float) and not math.isfinite(value) and _bounded(meta):
                # NaN passes every comparison (nan < 0 is False): a bound alone would let it through
                raise NotelmError(f"{self.label(f.name)} = {value!r}: expected a finite number")
            setattr(self, f.name, value)
            self._check_range(f.name, value, meta)
        self.check()
        return self

    def _check_range(self, name: str, value, meta) -> None:
        label = self.label(name)
        if meta.get("choices") and value not in meta["choices"]:
            raise NotelmError(f"{label} = {value!r}: expected one of {', '.join(map(repr, meta['choices']))}")
        if meta.get("minimum") is not None and value < meta["minimum"]:
            raise NotelmError(f"{label} must be >= {meta['minimum']} (got {value!r})")
        if meta.get("above") is not None and not value > meta["above"]:
            raise NotelmError(f"{label} must be > {meta['above']} (got {value!r})")
        if meta.get("maximum") is not None and value > meta["maximum"]:
            raise NotelmError(f"{label} must be <= {meta['maximum']} (got {value!r})")
        if meta.get("below") is not None and not value < meta["below"]:
            raise NotelmError(f"{label} must be < {meta['below']} (got {value!r})")

    def check(self) -> None:
        """Checks that involve several settings (subclasses); raise NotelmError."""

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def documentation(cls) -> str:
        """Every setting with its default and what it does, one per line."""
        lines = []
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            lines.append(f"{cls.label(f.name)} = {default!r}: {f.metadata.get('doc', '')}{_bounds(f.metadata)}")
        return "\n".join(lines)


def _bounded(meta) -> bool:
    return any(meta.get(key) is not None for key in ("minimum", "maximum", "above", "below"))


def _bounds(meta) -> str:
    """`` (>= 1, <= 65536)``: the range a setting accepts, for ``documentation()``."""
    signs = (("minimum", ">="), ("above", ">"), ("maximum", "<="), ("below", "<"))
    parts = [f"{sign} {meta[key]}" for key, sign in signs if meta.get(key) is not None]
    return f" ({', '.join(parts)})" if parts else ""


def parse_override(item: str) -> tuple[list[str], Any]:
    """``section.key=value`` (value in TOML syntax; a bare word is a string) -> (path, value)."""
    import tomllib

    key, sep, text = item.partition("=")
    path = [part.strip() for part in key.split(".")]
    if not sep or not all(path):
        raise NotelmError(f"--set {item!r}: expected key=value, e.g. train.steps=500")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text.strip()  # a bare word: take it as a string
    return path, value
