"""Range checks for settings, with the types made explicit: a bool is not an integer here, a
float is not an integer (2.5 iterations used to reach range() as a TypeError), and NaN is in no
range (every comparison with it is False, so `not lo <= x <= hi` alone lets nothing through but
a reversed test lets it pass)."""
import math
import numbers
import os
from pathlib import Path

import numpy as np

from .errors import ConfigError, OutputError


def keep(config, name: str, value) -> None:
    """Store a checked value on a frozen dataclass (its __post_init__): the plain int or float
    the check returned, since a numpy integer passes the check but not every consumer
    (torch.Generator.manual_seed refuses np.uint64)."""
    object.__setattr__(config, name, value)


def flag(name: str, value) -> bool:
    """A bool (numpy's too): force="False" is a non-empty string, true to an if."""
    if not isinstance(value, (bool, np.bool_)):
        raise ConfigError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def an_output(name: str, value) -> Path:
    """a_path for an output file: a name ending in a separator names a folder, and Path()
    would drop that separator and write a file of the folder's name ("out/" -> "out")."""
    path = a_path(name, value)
    text = os.fsdecode(value)
    if text.endswith(("/", os.sep)):
        raise OutputError(f"{text}: ends in a separator, so it names a folder; give the output file's name")
    return path


def a_path(name: str, value) -> Path:
    """A file name as str or os.PathLike: bytes, numbers and None would reach open() or Path()
    as a TypeError, or as a file descriptor."""
    if isinstance(value, bool) or not isinstance(value, (str, os.PathLike)):
        raise ConfigError(f"{name} must be a path (str or os.PathLike), got {type(value).__name__}")
    return Path(value)


def integer(name: str, value, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{name} must be an integer in {lo}..{hi}, got {value!r}")
    if not lo <= value <= hi:
        raise ConfigError(f"{name} must be in {lo}..{hi}, got {value}")
    return int(value)


def number(name: str, value, lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> float:
    """A real number in the interval; lo_open / hi_open exclude that end."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if (value < lo or (lo_open and value == lo)) or (value > hi or (hi_open and value == hi)):
        span = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        raise ConfigError(f"{name} must be in {span}, got {value}")
    return float(value)
