"""``nesting_depth`` (level by level) gives exactly what the (node, depth) stack walk it replaced gave."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from cds_service.protocol import MAX_NESTING, nesting_depth

_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=4)
_JSON = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=4),
    max_leaves=60,
)


def _reference(value: Any, limit: int = MAX_NESTING) -> int:
    """The previous implementation, verbatim: an explicit stack of (node, depth)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        depth += 1
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        stack.extend((child, depth) for child in children if isinstance(child, (dict, list)))
    return deepest


def _nested(depth: int) -> Any:
    value: Any = 1
    for level in range(depth):
        value = [value] if level % 2 else {"a": value, "b": 2}
    return value


@settings(max_examples=400, deadline=None)
@given(_JSON, st.integers(min_value=-1, max_value=8))
def test_same_depth_as_the_stack_walk(value: Any, limit: int) -> None:
    assert nesting_depth(value, limit) == _reference(value, limit)


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=0, max_value=MAX_NESTING + 40))
def test_deep_values_stop_at_limit_plus_one(depth: int) -> None:
    value = _nested(depth)
    assert nesting_depth(value) == _reference(value) == min(depth, MAX_NESTING + 1)


def test_very_deep_value_does_not_recurse() -> None:
    assert nesting_depth(_nested(100_000)) == MAX_NESTING + 1
