"""The JSON encoder's cached C encoder (per thread) gives the same bytes as
the standard library, and recovers from errors."""

from __future__ import annotations

import json
import math
import threading
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from django_actors.encoder import JSONEncoder

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


def _standard(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=True).encode("utf-8")


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=8), json_values, max_size=6))
def test_same_bytes_as_the_standard_library(data):
    assert JSONEncoder().encode(data) == _standard(data)


def test_tuples_unicode_and_special_floats():
    data = {"args": (1, "é€😀", [math.inf, -math.inf]), "kwargs": {"x": None}, "n": 1.5}
    assert JSONEncoder().encode(data) == _standard(data)


def test_errors_leave_the_encoder_usable():
    encoder = JSONEncoder()
    loop: list[Any] = []
    loop.append(loop)
    for bad, message in (({"v": loop}, "Circular reference"), ({"v": object()}, "not JSON serializable")):
        try:
            encoder.encode(bad)
        except TypeError as exc:
            assert message in str(exc)
        else:
            raise AssertionError("no TypeError")
        assert encoder.encode({"ok": [1, 2]}) == b'{"ok":[1,2]}'


def test_threads_sharing_a_structure_never_see_a_false_circular_reference():
    encoder = JSONEncoder()
    shared = {"nested": [{"deep": list(range(50))} for _ in range(20)]}
    expected = _standard({"v": shared})
    errors: list[BaseException] = []

    def run() -> None:
        try:
            for _ in range(300):
                assert encoder.encode({"v": shared}) == expected
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
