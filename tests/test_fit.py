from hypothesis import given, strategies as st

from ddcodec.fit import FitConfig, default_lr


@given(st.integers(1, 1023))
def test_default_learning_rate_falls_with_width_from_005_to_001(k):
    lr = default_lr(k)
    assert 0.01 <= lr <= 0.05
    assert default_lr(k + 1) <= lr
    assert FitConfig().lr_for(k) == lr and FitConfig(lr=0.003).lr_for(k) == 0.003


def test_default_learning_rate_ends_are_the_measured_ones():
    assert default_lr(8) == default_lr(21) == 0.05  # kodak-mini rate points (NOTES.md)
    assert default_lr(64) == 0.01  # the reference's rate, better at k = 64
