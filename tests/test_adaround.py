import copy

import pytest
import torch
from hypothesis import given, settings, strategies as st

import ddcodec
from ddcodec.adaround import learn_rounding
from ddcodec.errors import ConfigError
from ddcodec.metrics import psnr
from ddcodec.quant import QuantConfig, rounding_steps, search_steps, steps_tensor

from .conftest import small


@pytest.fixture(scope="module")
def fitted():
    from ddcodec import FitConfig
    from ddcodec.codec import fit_bank
    bank = fit_bank([small(48, 32), small(32, 48)], 6, 4, FitConfig(iters=150), "cpu")
    model = bank.model.fold()
    steps = steps_tensor(search_steps(model, bank.z, bank.loss_fn, QuantConfig(max_loss_db=1.0)), "cpu")
    return model, bank.z, bank.loss_fn, steps


def _nearest_loss(model, z, loss_fn, steps):
    params = [t for _, t in model.named_tensors()]
    with torch.no_grad():
        return loss_fn(model(z, [torch.round(p / s.view(-1, *[1] * (p.dim() - 1))) * s.view(-1, *[1] * (p.dim() - 1))
                                 for p, s in zip(params, steps)]))


@settings(max_examples=6, deadline=None)
@given(st.integers(1, 60), st.floats(1e-3, 0.05), st.floats(0, 100))
def test_learned_rounding_puts_every_weight_on_a_neighbouring_integer_and_never_fits_worse(fitted, iters, lr, weight):
    model, z, loss_fn, steps = fitted
    model = copy.deepcopy(model)
    before = [t.detach().clone() for _, t in model.named_tensors()]
    nearest = _nearest_loss(model, z, loss_fn, steps)
    final = learn_rounding(model, z, loss_fn, steps, iters, lr, weight)
    for (_, p), b, s in zip(model.named_tensors(), before, steps):
        s = s.view(-1, *[1] * (p.dim() - 1))
        q = torch.round(p.detach() / s)
        assert torch.equal(q * s, p.detach())  # on the grid: the writer's integers give back these weights
        assert bool(((q >= torch.floor(b / s)) & (q <= torch.ceil(b / s))).all())  # below or above w / s
    with torch.no_grad():
        assert torch.allclose(loss_fn(model(z)), final)  # the model holds what it reports
    assert bool((final <= nearest).all())  # a member keeps the nearest rounding where it fits better


def test_learned_rounding_beats_the_nearest_integer_on_a_coarse_grid(fitted):
    # at a 1 dB rounding budget the nearest integers leave room: the learned choice fits better
    model, z, loss_fn, steps = fitted
    model = copy.deepcopy(model)
    nearest = _nearest_loss(model, z, loss_fn, steps)
    final = learn_rounding(model, z, loss_fn, steps, 300, 0.01, 30.0)
    assert bool((final < nearest).all())


def test_rounding_steps_default_to_a_third_of_the_fit():
    assert rounding_steps(QuantConfig(), 3000) == 1000
    assert rounding_steps(QuantConfig(round_iters=0), 3000) == 0
    assert rounding_steps(QuantConfig(round_iters=7), 3000) == 7
    with pytest.raises(ConfigError):
        QuantConfig(round_iters=-1)
    with pytest.raises(ConfigError):
        QuantConfig(round_lr=0)


def test_an_encode_with_learned_rounding_decodes_to_what_it_reports():
    from ddcodec import FitConfig
    img = small(48, 32)
    # the setting that beats the nearest integers above, through the whole encode
    r = ddcodec.encode(img, 6, 4, FitConfig(iters=150), QuantConfig(max_loss_db=1.0, qat_iters=0, round_iters=300),
                       device="cpu")
    off = ddcodec.encode(img, 6, 4, FitConfig(iters=150), QuantConfig(max_loss_db=1.0, qat_iters=0, round_iters=0),
                         device="cpu")
    assert psnr(img, ddcodec.decode(r.data)) == r.psnr
    assert r.data != off.data  # the rounding changed some integers
