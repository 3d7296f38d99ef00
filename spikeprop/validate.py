"""Checks of user-supplied values: type and range, with messages that say what to change.

Every value that reaches spikeprop from outside (a flag, a TOML key, a field of ``config.json``,
a rule option, a field of an exported file) goes through one of these, so that nonsense (a
string for a number, ``true`` for a batch size, NaN, an infinity, zero where a positive value is
needed) is a one-line ``SpikepropError`` naming the field, never a traceback or a silent
conversion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from spikeprop import SpikepropError


@dataclass(frozen=True)
class Range:
    """A closed or half-open interval of allowed numbers (``None``: unbounded on that side)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def contains(self, x: float) -> bool:
        if self.low is not None and (x <= self.low if self.low_open else x < self.low):
            return False
        if self.high is not None and (x >= self.high if self.high_open else x > self.high):
            return False
        return True

    def __str__(self) -> str:
        lo, hi = _fmt(self.low), _fmt(self.high)
        if self.low is not None and self.high is not None:
            return f"{'(' if self.low_open else '['}{lo}, {hi}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {lo}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {hi}"
        return "any finite number"


def _fmt(x: float | None) -> str:
    """Integral bounds as integers (2**24 as 16777216, not 1.67772e+07)."""
    if x is None:
        return ""
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e16 else f"{x:g}"


POSITIVE = Range(0.0, None, low_open=True)
NON_NEGATIVE = Range(0.0, None)
UNIT = Range(0.0, 1.0)
AT_LEAST_ONE = Range(1, None)


def _in(allowed: Range) -> str:
    text = str(allowed)
    return f"in {text}" if text[0] in "[(" else text


def type_name(value: Any) -> str:
    return "a boolean" if isinstance(value, bool) else f"{type(value).__name__} {value!r}"


def integer(name: str, value: Any, allowed: Range = AT_LEAST_ONE) -> int:
    """``value`` as an int in ``allowed``; bools, floats (even 2.0) and strings are refused."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpikepropError(f"{name} must be an integer {allowed}; got {type_name(value)}")
    if not allowed.contains(value):
        raise SpikepropError(f"{name} must be an integer {allowed}; got {name.lstrip('-')}={value}")
    return int(value)


def number(name: str, value: Any, allowed: Range = Range()) -> float:
    """``value`` (an int or a float, not a bool) as a finite float in ``allowed``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpikepropError(f"{name} must be a number {allowed}; got {type_name(value)}")
    x = float(value)
    if not math.isfinite(x):
        raise SpikepropError(f"{name} must be a finite number {allowed}; got {x}")
    if not allowed.contains(x):
        raise SpikepropError(f"{name} must be {_in(allowed)}; got {name.lstrip('-')}={x:g}")
    return x


def string(name: str, value: Any, choices: tuple[str, ...] | None = None) -> str:
    """``value`` as a non-empty string (one of ``choices`` when given)."""
    if not isinstance(value, str):
        raise SpikepropError(f"{name} must be a string; got {type_name(value)}")
    if choices is not None and value not in choices:
        raise SpikepropError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
    if not value:
        raise SpikepropError(f"{name} must not be empty")
    return value


def check(name: str, value: Any, kind: type, allowed: Range | None = None, choices: tuple | None = None) -> Any:
    """Dispatch on ``kind`` (int, float or str): the value checked and normalised."""
    if kind is int:
        return integer(name, value, allowed or Range())
    if kind is float:
        return number(name, value, allowed or Range())
    if kind is str:
        return string(name, value, choices)
    raise TypeError(f"no check for {kind}")
