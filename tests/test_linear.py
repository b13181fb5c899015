"""models.linear: oneDNN products for CPU float32 linear layers, equal to F.linear up to float rounding."""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models import linear as lin

needs_onednn = pytest.mark.skipif(not lin.AVAILABLE, reason="this torch build has no oneDNN linear")


@pytest.fixture(autouse=True)
def onednn_on(monkeypatch):
    """The path under test is opt-in (TIMEMAE_CPU_LINEAR=onednn); switch it on here whatever the environment says."""
    monkeypatch.setattr(lin, "ENABLED", lin.AVAILABLE)


def _grads(fn, x, w, b, g):
    """Output and gradients of (x, w, b) (None where no gradient is asked)."""
    x, w = x.detach().requires_grad_(x.requires_grad), w.detach().requires_grad_(w.requires_grad)
    b = None if b is None else b.detach().requires_grad_(b.requires_grad)
    y = fn(x, w, b)
    inputs = [t for t in (x, w, b) if t is not None and t.requires_grad]
    grads = iter(torch.autograd.grad(y, inputs, g))
    return y, [next(grads) if t is not None and t.requires_grad else None for t in (x, w, b)]


@needs_onednn
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("layout", ["2d", "3d", "strided"])
def test_matches_float64_reference_like_f_linear(bias, layout):
    gen = torch.Generator().manual_seed(0)
    if layout == "2d":
        x = torch.randn(300, 192, generator=gen)
    elif layout == "3d":
        x = torch.randn(2, 150, 192, generator=gen)
    else:  # a transposed view: oneDNN must honour the strides
        x = torch.randn(2, 192, 150, generator=gen).transpose(1, 2)
    w = torch.randn(576, 192, generator=gen) / 192**0.5
    b = torch.randn(576, generator=gen) if bias else None
    x.requires_grad_()
    w.requires_grad_()
    if b is not None:
        b.requires_grad_()
    assert lin.uses_onednn(x, w, b)
    g = torch.randn(*x.shape[:-1], 576, generator=gen)
    y, grads = _grads(lin.linear, x, w, b, g)
    y64, ref = _grads(F.linear, x.double(), w.double(), None if b is None else b.double(), g.double())
    assert y.dtype == torch.float32 and y.shape == y64.shape
    torch.testing.assert_close(y.double(), y64, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, ref, strict=True):
        assert (got is None) == (want is None)
        if got is not None:
            assert got.dtype == torch.float32 and got.shape == want.shape
            torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-4)


@needs_onednn
def test_only_the_asked_gradients():
    x = torch.randn(64, 256, requires_grad=True)
    w = torch.randn(512, 256)  # frozen weight
    b = torch.randn(512, requires_grad=True)
    lin.linear(x, w, b).sum().backward()
    assert x.grad is not None and b.grad is not None and w.grad is None
    torch.testing.assert_close(b.grad, torch.full((512,), 64.0))
    x2 = torch.randn(64, 256)  # input without gradient: only the weight's
    w2 = torch.randn(512, 256, requires_grad=True)
    lin.linear(x2, w2).sum().backward()
    torch.testing.assert_close(w2.grad, x2.sum(0).expand(512, -1), rtol=1e-5, atol=1e-4)


@needs_onednn
def test_deterministic_run_to_run():
    gen = torch.Generator().manual_seed(1)
    x, w = torch.randn(392, 768, generator=gen), torch.randn(3072, 768, generator=gen)
    g = torch.randn(392, 3072, generator=gen)
    runs = [_grads(lin.linear, x.requires_grad_(), w.requires_grad_(), None, g) for _ in range(2)]
    assert torch.equal(runs[0][0], runs[1][0])
    for a, b in zip(runs[0][1][:2], runs[1][1][:2], strict=True):
        assert torch.equal(a, b)


def test_falls_back_to_f_linear_where_onednn_does_not_apply(monkeypatch):
    big_x, big_w = torch.randn(256, 256), torch.randn(256, 256)
    small_x, small_w = torch.randn(8, 16), torch.randn(4, 16)
    assert not lin.uses_onednn(small_x, small_w)  # below MIN_MACS
    assert not lin.uses_onednn(torch.randn(2048), torch.randn(1024, 2048))  # 1-D input: F.linear
    assert not lin.uses_onednn(big_x.double(), big_w.double())
    assert not lin.uses_onednn(big_x.half(), big_w.half())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not lin.uses_onednn(big_x, big_w)
    partitioned = nn.Parameter(big_w.clone())
    partitioned.ds_id = 0  # how DeepSpeed ZeRO-3 marks its partitioned parameters
    assert not lin.uses_onednn(big_x, partitioned)
    monkeypatch.setattr(lin, "ENABLED", False)
    assert not lin.uses_onednn(big_x, big_w)
    # The fallback is F.linear itself: bitwise the same output.
    assert torch.equal(lin.linear(big_x, big_w), F.linear(big_x, big_w))


def test_environment_switch_turns_it_off():
    code = "import models.linear as m; print(m.ENABLED)"
    env = {**os.environ, "TIMEMAE_ONEDNN_LINEAR": "0"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("env,expected", [({}, "False"), ({"TIMEMAE_CPU_LINEAR": "onednn"}, "AVAILABLE"),
                                          ({"TIMEMAE_CPU_LINEAR": "mkl"}, "False")])
def test_onednn_path_is_opt_in(env, expected):
    code = "import models.linear as m; print(m.ENABLED, m.AVAILABLE)"
    base = {k: v for k, v in os.environ.items() if k not in ("TIMEMAE_CPU_LINEAR", "TIMEMAE_ONEDNN_LINEAR")}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], env={**base, **env}, cwd=root, capture_output=True, text=True,
                         check=True)
    enabled, available = out.stdout.split()
    assert enabled == (available if expected == "AVAILABLE" else expected)


def test_linear_module_is_an_nn_linear_with_the_same_state_dict():
    torch.manual_seed(0)
    ours = lin.Linear(256, 512)
    ref = nn.Linear(256, 512)
    ref.load_state_dict(ours.state_dict(), strict=True)
    assert isinstance(ours, nn.Linear) and list(ours.state_dict()) == ["weight", "bias"]
    x = torch.randn(4, 64, 256)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)
