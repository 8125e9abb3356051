"""JSON written strictly (no NaN or Infinity) and read defensively (files may be untrusted).

Writing: :func:`json_safe` makes numpy values plain and non-finite floats ``null``, and
:func:`dumps` refuses anything JSON cannot hold. Reading: :func:`loads` and
:func:`read_json_file` turn every parse failure into a one-line
:class:`~neuralcleanse.core.errors.InputError`, and the ``json_*`` checks read one field of a
parsed document, naming it in their messages.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from neuralcleanse.core.errors import InputError

#: Largest JSON file :func:`read_json_file` reads (a report of 1000 labels of 224x224x3 is
#: about 2 GB; anything larger is not a report).
MAX_JSON_BYTES = 4 * 2**30


# -- writing ---------------------------------------------------------------------------------
def finite_or_none(value: float) -> float | None:
    """``value`` as a float, or ``None`` when it is NaN or infinite."""
    return float(value) if math.isfinite(value) else None


def finite_list(array: np.ndarray) -> list[Any]:
    """``array`` flattened to float32 values, non-finite ones as ``None``."""
    values = np.asarray(array, dtype=np.float32).ravel()
    finite = np.isfinite(values)
    if finite.all():
        return values.tolist()
    return [float(v) if ok else None for v, ok in zip(values.tolist(), finite.tolist())]


def json_safe(value: Any) -> Any:
    """``value`` with numpy scalars and arrays made plain and non-finite floats made ``None``."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return finite_or_none(float(value))
    return value


def dumps(data: Any, indent: int | None = 1) -> str:
    """JSON text of ``data`` with non-finite numbers as ``null``; never writes NaN/Infinity."""
    return json.dumps(json_safe(data), indent=indent, allow_nan=False)


# -- reading ---------------------------------------------------------------------------------
def loads(text: str, what: str) -> Any:
    """Parse JSON text; ``NaN``/``Infinity`` become ``None``; errors are one-line InputErrors.

    ``what`` names the source in the message (e.g. the file).
    """
    try:
        return json.loads(text, parse_constant=lambda _: None)
    except json.JSONDecodeError as exc:
        raise InputError(f"{what} is not valid JSON: {exc}") from None
    except (ValueError, RecursionError) as exc:  # integers of > 4300 digits, deep nesting
        name = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise InputError(f"{what} is not usable JSON: {name}") from None


def read_json_file(path: str | Path) -> Any:
    """Read and parse a JSON file (UTF-8); a one-line InputError names the file on bad content.

    Raises:
        InputError: When the file is not a regular file, too large, not UTF-8 or not JSON.
        OSError: When it cannot be read.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{str(path)!r} is not a file")
    if path.stat().st_size > MAX_JSON_BYTES:
        raise InputError(f"{str(path)!r} is larger than {MAX_JSON_BYTES // 2**30} GiB")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"{str(path)!r} is not UTF-8 text") from None
    return loads(text, repr(str(path)))


# -- checking parsed fields ------------------------------------------------------------------
def shown(value: Any, limit: int = 40) -> str:
    """A short ``repr`` of ``value`` for a message (cut to ``limit`` characters)."""
    try:
        text = repr(value)
    except (ValueError, RecursionError):
        text = f"a {type(value).__name__}"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def json_kind(value: Any) -> str:
    """What ``value`` is, in JSON's words (``"an object"``, ``"a list"``, ``"null"``, ...)."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
             int: "an integer", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def json_object(value: Any, name: str) -> dict[str, Any]:
    """``value`` when it is a JSON object, else an InputError naming ``name``."""
    if not isinstance(value, dict):
        raise InputError(f"{name} must be a JSON object (got {json_kind(value)})")
    return value


def required(data: dict[str, Any], key: str) -> Any:
    """``data[key]``, or an InputError saying that the field is missing."""
    if key not in data:
        raise InputError(f"the field {key!r} is missing")
    return data[key]


def is_finite_number(value: Any) -> bool:
    """Whether ``value`` is a finite JSON number (an int or float, not a boolean)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)


def json_integer(value: Any, name: str, low: int = 0, high: int = 2**31 - 1) -> int:
    """``value`` when it is an integer in ``[low, high]`` (not a boolean), else an InputError."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InputError(f"{name} must be an integer in [{low}, {high}] (got {shown(value)})")
    return value


def json_number(value: Any, name: str) -> float:
    """``value`` as a float (``null`` as NaN, integers too large for a float as infinite)."""
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{name} must be a number or null (got {json_kind(value)})")
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def json_boolean(value: Any, name: str) -> bool:
    """``value`` when it is ``true`` or ``false``, else an InputError."""
    if not isinstance(value, bool):
        raise InputError(f"{name} must be true or false (got {json_kind(value)})")
    return value


def json_shape(value: Any, name: str, ndims: tuple[int, ...]) -> tuple[int, ...]:
    """An array shape: a list of ``ndims`` (one of them) integers in [1, 8192]."""
    ok = isinstance(value, list) and len(value) in ndims and all(
        isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 8192 for n in value)
    if not ok:
        raise InputError(f"{name} must be {' or '.join(map(str, ndims))} integers in "
                         f"[1, 8192] (got {shown(value)})")
    return tuple(value)


def json_float_array(value: Any, shape: tuple[int, ...], name: str) -> np.ndarray:
    """A float32 array of ``shape`` from a flat list of finite numbers or ``null`` (NaN)."""
    size = math.prod(shape)
    if not isinstance(value, list) or len(value) != size:
        got = f"{len(value)} values" if isinstance(value, list) else json_kind(value)
        raise InputError(f"{name} must be a list of {size} numbers (got {got})")
    if not all(v is None or is_finite_number(v) for v in value):
        raise InputError(f"{name} must hold only numbers or null")
    return np.asarray([math.nan if v is None else v for v in value],
                      dtype=np.float32).reshape(shape)
