"""Event values as JSON text: the canonical form that is stored and that identifies an event,
and the compact form that measures an event's size.

The canonical JSON of a value is what ``json.dumps(value, sort_keys=True, separators=(",",
":"), ensure_ascii=False, allow_nan=False)`` writes. orjson writes the same text in a fifth of
the time for ordinary payloads, so it writes it wherever its output cannot differ; the json
module writes the rest.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

import orjson

_CANONICAL_ENCODE: Final = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
).encode
_COMPACT_ENCODE: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

_ORJSON_MAY_DIFFER: Final = re.compile(
    # orjson writes NaN and Infinity as null (the json module refuses them), and floats under
    # 1e-4 as 1e-5 or 0.00001 where the json module writes 1e-05. So a null, a number with a
    # negative exponent, or one under 1e-4 spelt out sends a value to the json module. In
    # compact JSON a value starts the document or follows ":", "," or "[".
    r"[:,\[](?:null|-?[0-9.]+e-|-?0\.0000)"
).search

_ESCAPED_NUL: Final = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


class UnstorableValue(ValueError):
    """A value that is valid JSON to Python but that PostgreSQL's jsonb refuses; the message
    says why, naming no part of the value."""


def canonical_value(value: Any) -> str:
    """The canonical JSON of an event's value; proves on the way that jsonb can store it, and
    raises :class:`UnstorableValue` when it cannot (NaN or Infinity, unpaired UTF-16
    surrogates, the NUL character, nesting deeper than the encoders go)."""
    try:
        text = _canonical_json(value)
    except UnicodeEncodeError:
        raise UnstorableValue("/value must not contain unpaired UTF-16 surrogates") from None
    except ValueError:
        # Python's json module reads NaN and Infinity; JSON and jsonb have no such numbers.
        raise UnstorableValue("/value must not contain NaN or Infinity") from None
    except RecursionError:
        raise UnstorableValue("/value is nested too deeply") from None
    if "\\u0000" in text and _ESCAPED_NUL.search(text):
        raise UnstorableValue("/value must not contain the NUL character (\\u0000)")
    return text


def _canonical_json(value: Any) -> str:
    try:
        text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError:
        # orjson.JSONEncodeError: integers beyond 64 bits, lone surrogates, nesting deeper
        # than 254. The json module answers (or raises) for them.
        return _canonical_json_by_json_module(value)
    if ("null" in text or "e-" in text or "0.0000" in text) and _ORJSON_MAY_DIFFER(text):
        return _canonical_json_by_json_module(value)
    return text


def _canonical_json_by_json_module(value: Any) -> str:
    text: str = _CANONICAL_ENCODE(value)
    text.encode()  # a lone surrogate raises UnicodeEncodeError, as it must
    return text


def compact_json(value: Any) -> str:
    """A JSON document as compact text (no whitespace, non-ASCII as is, keys in their order,
    NaN and Infinity as Python writes them): ``json.dumps(value, separators=(",", ":"),
    ensure_ascii=False)``."""
    text: str = _COMPACT_ENCODE(value)
    return text
