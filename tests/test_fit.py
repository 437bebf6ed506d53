import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st

from ddcodec.codec import fit_bank
from ddcodec.errors import ConfigError
from ddcodec.fit import STOP_EVERY, FitConfig, default_lr, mse_per_image


@given(st.integers(1, 1023))
def test_default_learning_rate_falls_with_width_from_005_to_001(k):
    lr = default_lr(k)
    assert 0.01 <= lr <= 0.05
    assert default_lr(k + 1) <= lr
    assert FitConfig().lr_for(k) == lr and FitConfig(lr=0.003).lr_for(k) == 0.003


def test_default_learning_rate_ends_are_the_measured_ones():
    assert default_lr(8) == default_lr(21) == 0.05  # kodak-mini rate points (NOTES.md)
    assert default_lr(64) == 0.01  # the reference's rate, better at k = 64


def _noisy(h=32, w=48, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_early_stop_ends_the_fit_once_the_loss_reaches_stop_mse():
    img = _noisy()
    # any output of a sigmoid net is within MSE 0.99 of any image in [0, 1]: stop at the first test
    bank = fit_bank([img], 4, 3, FitConfig(iters=200, stop_mse=0.99), device="cpu")
    assert bank.iters == STOP_EVERY
    # white noise cannot be fitted to MSE 1e-9 in 30 steps: the whole budget runs
    bank = fit_bank([img], 4, 3, FitConfig(iters=30, stop_mse=1e-9), device="cpu")
    assert bank.iters == 30


def test_stop_mse_out_of_range_is_a_config_error():
    with pytest.raises(ConfigError):
        FitConfig(stop_mse=1.5)
