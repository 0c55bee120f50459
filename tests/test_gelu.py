"""GELU through ATen's own kernel in compiled CPU models: the same values and gradients as F.gelu."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import mlmlab.model as model_module


def value_and_grad(fn, x: torch.Tensor, grad_out: torch.Tensor):
    x = x.detach().clone().requires_grad_()
    y = fn(x)
    y.backward(grad_out)
    return y.detach(), x.grad


def test_large_gelus_in_compiled_cpu_models_use_atens_kernel_with_the_same_results(monkeypatch):
    x = torch.randn(model_module.ATEN_GELU_MIN_ELEMENTS // 256, 256, generator=torch.Generator().manual_seed(0))
    x = x.to(torch.bfloat16)
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    used = []
    real = model_module._aten_gelu
    monkeypatch.setattr(model_module, "_aten_gelu", lambda t: used.append(t.numel()) or real(t))
    expected = value_and_grad(F.gelu, x, grad_out)
    assert torch.equal(value_and_grad(model_module.gelu, x, grad_out)[0], expected[0]) and used == []  # eager

    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)  # as a compiled model decides
    got = value_and_grad(model_module.gelu, x, grad_out)
    assert used == [x.numel()]
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    value_and_grad(model_module.gelu, x[:100], grad_out[:100])
    assert used == [x.numel()]  # small GELUs stay with inductor's loop


def test_the_custom_op_compiles_and_matches():
    x = torch.randn(2048, 1024, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)
    compiled = torch.compile(lambda t: model_module._aten_gelu(t) * 2, dynamic=False)
    got = value_and_grad(compiled, x, grad_out)
    expected = value_and_grad(lambda t: F.gelu(t) * 2, x, grad_out)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
