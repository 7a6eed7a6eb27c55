"""The JSON nesting limit (functions.http.decode_json): the project's own, counted exactly, and
the same on every Python version.

Deterministic (derandomized, no example database), like the other property tests.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from functions.errors import MalformedRequest
from functions.http import MAX_JSON_DEPTH, decode_json

FAST = settings(
    max_examples=150,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# Strings that look like structure: brackets, quotes and backslashes, escaped or not.
TRICKY_TEXT = st.text(alphabet='[]{}"\\,:/ ué\u2028', max_size=12)
LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    TRICKY_TEXT,
)


def depth_of(value: Any) -> int:
    """The nesting depth by its definition: the outermost object or array is level 1."""
    if isinstance(value, dict):
        return 1 + max((depth_of(item) for item in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth_of(item) for item in value), default=0)
    return 0


@st.composite
def nested_values(draw: st.DrawFn) -> Any:
    """A value with a spine of 0 to 90 containers (objects and arrays mixed, with tricky keys)
    and a leaf or a shallow list beside it at some levels: deep enough to cross the limit in
    both directions, with the deepest branch anywhere among its siblings."""
    value: Any = draw(LEAVES)
    spine = draw(st.integers(0, 90))
    levels = draw(
        st.lists(
            st.tuples(st.sampled_from(["array", "object", "alone"]), TRICKY_TEXT, LEAVES),
            min_size=spine,
            max_size=spine,
        )
    )
    for kind, key, leaf in levels:
        beside = [leaf, [leaf, [leaf]]]
        if kind == "alone":
            value = [value]
        elif kind == "array":
            value = [*beside, value] if len(key) % 2 else [value, *beside]
        else:
            value = {key: value, key + "0": beside[0], key + "1": beside[1]}
    return value


@FAST
@given(nested_values(), st.booleans())
def test_a_body_is_parsed_exactly_when_it_nests_at_most_64_levels(
    value: Any, ascii_only: bool
) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only)
    if depth_of(value) <= MAX_JSON_DEPTH:
        assert decode_json(text) == value
    else:
        with pytest.raises(MalformedRequest) as refused:
            decode_json(text)
        assert refused.value.message == "the body is nested more than 64 levels deep"


@pytest.mark.parametrize(
    ("text", "accepted"),
    [
        ("[" * 64 + "]" * 64, True),
        ("[" * 65 + "]" * 65, False),
        ('{"a":' * 64 + "1" + "}" * 64, True),
        ('{"a":' * 65 + "1" + "}" * 65, False),
        ("[" * 63 + '"[[[[\\"[[[["' + "]" * 63, True),  # brackets in a string are not levels
        ("[" * 5_000 + "]" * 5_000, False),  # parses on 3.13, not on 3.11: refused on both
        ("[" * 200_000 + "]" * 200_000, False),  # beyond either interpreter's recursion limit
        ("[" * 200_000, False),  # never closed
    ],
)
def test_the_limit_at_its_edges(text: str, accepted: bool) -> None:
    if accepted:
        assert depth_of(decode_json(text)) <= MAX_JSON_DEPTH
    else:
        with pytest.raises(MalformedRequest) as refused:
            decode_json(text)
        assert refused.value.message == "the body is nested more than 64 levels deep"
