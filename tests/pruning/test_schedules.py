import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxsparse import schedules


@settings(max_examples=30, deadline=None)
@given(st.floats(0.0, 0.5), st.floats(0.5, 0.99), st.integers(0, 100), st.integers(1, 500),
       st.integers(1, 50))
def test_gradual_reaches_final_at_end_and_updates_there(initial, final, begin, length, freq):
    end = begin + length
    s = schedules.gradual(initial, final, begin, end, freq)
    assert float(s(end)) == pytest.approx(final, abs=1e-6)
    assert float(s(end + 1000)) == pytest.approx(final, abs=1e-6)
    assert float(s(begin)) == pytest.approx(initial, abs=1e-6)
    assert float(s(max(begin - 1, 0))) in (0.0, pytest.approx(initial, abs=1e-6))
    assert bool(s.should_update(end)) and bool(s.should_update(begin))
    assert not bool(s.should_update(end + 1))
    values = np.array([float(s(t)) for t in range(begin, end + 1, max(1, length // 10))])
    assert np.all(np.diff(values) >= -1e-6)  # Monotone.


def test_gradual_follows_the_cubic():
    s = schedules.gradual(0.0, 0.8, 0, 100, 10)
    assert float(s(50)) == pytest.approx(0.8 * (1 - 0.5**3))


def test_one_shot_and_constant():
    s = schedules.one_shot(10, 0.9)
    assert float(s(9)) == 0.0 and float(s(10)) == pytest.approx(0.9)
    assert [bool(s.should_update(t)) for t in (9, 10, 11)] == [False, True, False]
    c = schedules.constant(0.5, frequency=5)
    assert float(c(123)) == 0.5 and bool(c.should_update(10)) and not bool(c.should_update(11))
    assert bool(schedules.constant(0.5).should_update(0))


def test_schedules_work_under_jit():
    s = schedules.gradual(0.1, 0.9, 5, 50, 5)
    f = jax.jit(lambda t: (s(t), s.should_update(t)))
    for t in (0, 5, 7, 50, 99):
        v, u = f(t)
        assert float(v) == pytest.approx(float(s(t))) and bool(u) == bool(s.should_update(t))


@pytest.mark.parametrize("make,match", [
    (lambda: schedules.gradual(0.0, 1.0, 0, 10, 1), "final=1.0"),
    (lambda: schedules.gradual(0.0, 0.5, 10, 10, 1), "begin=10, end=10"),
    (lambda: schedules.gradual(0.0, 0.5, 0, 10, 0), "frequency=0"),
    (lambda: schedules.one_shot(-1), "step=-1"),
    (lambda: schedules.constant(0.5, frequency=0), "frequency=0"),
])
def test_bad_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()
