import torch
from hypothesis import given, strategies as st

from ddcodec.quant import (STEP_CODE_MAX, STEP_CODE_MIN, code_from_step, dequantize, quantize,
                           step_from_code)


@given(st.integers(STEP_CODE_MIN, STEP_CODE_MAX))
def test_step_codes_round_trip_and_follow_2_to_the_code_over_8(code):
    step = step_from_code([code])[0]
    assert code_from_step([step])[0] == code
    assert abs(float(step) / 2 ** (code / 8) - 1) < 1e-6


def test_steps_are_exact_powers_of_two_on_multiples_of_8():
    assert step_from_code([-16, 0, 8]).tolist() == [0.25, 1.0, 2.0]


@given(st.integers(-120, 0), st.integers(0, 2**31 - 1))  # below 2^-15, float32 ulps dominate
def test_rounding_error_is_at_most_half_a_step(code, seed):
    step = torch.from_numpy(step_from_code([code]))
    t = torch.randn(1, 50, generator=torch.Generator().manual_seed(seed))
    err = (dequantize(quantize(t, step), step) - t).abs().max()
    assert float(err) <= float(step) / 2 + 1e-6 * float(t.abs().max())  # + float32 ulps
