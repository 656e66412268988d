import pytest
from hypothesis import given
from hypothesis import strategies as st

import jaxsparse as js


@pytest.mark.parametrize("spec,expected", [
    ("2:4", js.NM(2, 4)), ("1:4", js.NM(1, 4)), ("2:8", js.NM(2, 8)), (" 3 : 7 ", js.NM(3, 7)),
    ("block:16x16", js.Block(16, 16)), ("BLOCK:32x8", js.Block(32, 8)),
    ("channel", js.Channel()), ("unstructured", js.Unstructured()),
])
def test_parse(spec, expected):
    assert js.parse_pattern(spec) == expected
    assert js.parse_pattern(str(expected)) == expected


@given(st.integers(1, 64), st.integers(2, 65))
def test_nm_round_trip(n, m):
    if n < m:
        assert str(js.parse_pattern(f"{n}:{m}")) == f"{n}:{m}"
    else:
        with pytest.raises(ValueError, match=f"{n}:{m}"):
            js.parse_pattern(f"{n}:{m}")


@pytest.mark.parametrize("spec", ["5:4", "0:4", "2:0", "4:4", "block:0x16", "block:16",
                                  "chanel", "", "2:4:8", 24])
def test_malformed_patterns_name_the_value(spec):
    with pytest.raises(ValueError) as e:
        js.parse_pattern(spec)
    assert repr(spec) in str(e.value) or str(spec) in str(e.value)


def test_pattern_objects_pass_through_and_are_frozen():
    p = js.NM(2, 4)
    assert js.parse_pattern(p) is p
    with pytest.raises(AttributeError):
        p.n = 3
