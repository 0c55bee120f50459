"""mlmlab's fused CPU attention kernel against the written-out attention it replaces."""

from __future__ import annotations

import math

import pytest
import torch

import mlmlab.model as model_module
from mlmlab import cpu_attention
from mlmlab.model import MaskedLM, ModelArgs

needs_kernel = pytest.mark.skipif(not cpu_attention.prepare(),
                                  reason=f"fused CPU attention unavailable here: {cpu_attention.reason()}")


def written_out(qkv: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Attention as the model writes it out, in qkv's dtype."""
    B, T, C3 = qkv.shape
    q, k, v = qkv.view(B, T, 3, n_heads, C3 // (3 * n_heads)).permute(2, 0, 3, 1, 4)
    scores = (q * (1.0 / math.sqrt(q.shape[-1]))) @ k.transpose(-2, -1)
    return (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, C3 // 3)


def output_and_grad(fn, qkv: torch.Tensor, grad_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = qkv.detach().clone().requires_grad_()
    out = fn(x)
    out.backward(grad_out.to(out.dtype))
    return out.detach().float(), x.grad.float()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@needs_kernel
@pytest.mark.parametrize("B,T,H,D", [(2, 32, 8, 16), (3, 96, 2, 16), (2, 64, 4, 32), (1, 32, 2, 64), (1, 128, 4, 16)])
def test_kernel_is_as_close_to_fp32_attention_as_the_written_out_path(B, T, H, D):
    gen = torch.Generator().manual_seed(B * T + H * D)
    qkv = (torch.randn(B, T, 3 * H * D, generator=gen) * 1.5).to(torch.bfloat16)
    grad_out = torch.randn(B, T, H * D, generator=gen)
    exact_out, exact_grad = output_and_grad(lambda x: written_out(x.float(), H), qkv, grad_out)
    fused_out, fused_grad = output_and_grad(lambda x: cpu_attention.attention(x, H), qkv, grad_out)
    bf16_out, bf16_grad = output_and_grad(lambda x: written_out(x, H), qkv, grad_out)
    assert fused_out.shape == exact_out.shape and fused_grad.shape == qkv.shape
    assert rel_err(fused_out, exact_out) < 1.5 * rel_err(bf16_out, exact_out) + 1e-3
    assert rel_err(fused_grad, exact_grad) < 1.5 * rel_err(bf16_grad, exact_grad) + 1e-3


@needs_kernel
def test_a_nan_score_stays_nan():
    qkv = torch.randn(1, 32, 3 * 16, dtype=torch.bfloat16)
    qkv[0, 5, 16 + 3] = float("nan")  # one key entry
    assert torch.isnan(cpu_attention.attention(qkv, 1)).all()


@needs_kernel
def test_unsupported_inputs_are_refused_by_name():
    with pytest.raises(ValueError, match="unsupported input"):
        cpu_attention.attention(torch.randn(1, 40, 48, dtype=torch.bfloat16), 1)  # T not a multiple of 32
    with pytest.raises(ValueError, match="unsupported input"):
        cpu_attention.attention(torch.randn(1, 32, 48), 1)  # fp32


def tiny_model(**overrides) -> MaskedLM:
    torch.manual_seed(0)
    return MaskedLM(ModelArgs(**{"vocab_size": 40, "d_model": 64, "n_layers": 2, "n_heads": 4, "d_ff": 128,
                                 "max_seq_len": 64, **overrides}))


def count_kernel_calls(monkeypatch) -> list[int]:
    """Counts the kernel's forward runs (inside the custom op, so compiled graphs count too)."""
    calls = []
    lib = cpu_attention._library()

    class Spy:
        attn_backward = lib.attn_backward if lib is not None else None

        @staticmethod
        def attn_forward(*args):
            calls.append(args[4].value)  # T
            return lib.attn_forward(*args)

    monkeypatch.setattr(cpu_attention, "_library", lambda: Spy)
    return calls


def forward(model, T: int, bf16: bool = True, mask: bool = False):
    ids = torch.randint(3, 40, (2, T), generator=torch.Generator().manual_seed(T))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        hidden = model.encode(ids, model.attention_mask(ids) if mask else None)
    return hidden


@needs_kernel
def test_the_model_uses_the_kernel_only_where_it_applies(monkeypatch):
    calls = count_kernel_calls(monkeypatch)
    model = tiny_model()
    forward(model, 32)
    assert calls == [32, 32]  # both layers
    for case in [dict(T=40), dict(T=32, bf16=False), dict(T=32, mask=True)]:
        calls.clear()
        forward(model, **case)
        assert calls == [], case
    monkeypatch.setattr(model_module, "FUSED_CPU_ATTENTION", False)
    forward(model, 32)
    assert calls == []
    monkeypatch.setattr(model_module, "FUSED_CPU_ATTENTION", True)
    dropping = tiny_model(dropout=0.1).train()
    forward(dropping, 32)
    assert calls == []  # attention dropout: written out
    forward(dropping.eval(), 32)
    assert calls == [32, 32]


@pytest.mark.slow
@needs_kernel
def test_a_compiled_training_step_uses_the_kernel_and_matches_the_written_out_step(monkeypatch):
    model = tiny_model(n_layers=1)
    ids = torch.randint(3, 40, (4, 32), generator=torch.Generator().manual_seed(1))
    positions = torch.arange(0, 128, 5)

    def loss_and_grads(fn):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, loss = fn(ids, ids, positions)
        loss.backward()
        return loss.item(), [p.grad.clone() for p in model.parameters()]

    monkeypatch.setattr(model_module, "FUSED_CPU_ATTENTION", False)
    written_loss, written_grads = loss_and_grads(model)
    monkeypatch.setattr(model_module, "FUSED_CPU_ATTENTION", True)
    calls = count_kernel_calls(monkeypatch)
    compiled_loss, compiled_grads = loss_and_grads(torch.compile(model, dynamic=False))
    assert calls == [32]
    assert compiled_loss == pytest.approx(written_loss, rel=2e-2)
    for a, b in zip(compiled_grads, written_grads):
        assert rel_err(a, b) < 0.05


def test_without_the_kernel_the_model_falls_back_and_says_why(monkeypatch, tmp_path):
    broken = tmp_path / "cpu_attention.cpp"
    broken.write_text("this is not C++\n")
    monkeypatch.setattr(cpu_attention, "_state", {})
    monkeypatch.setattr(cpu_attention, "READY", False)
    monkeypatch.setattr(cpu_attention, "_cpu_has_avx512_bf16", lambda: True)
    monkeypatch.setattr(cpu_attention, "_SOURCE", broken)
    assert cpu_attention.prepare() is False
    assert cpu_attention.reason().startswith("compiling cpu_attention.cpp failed")
    assert torch.isfinite(forward(tiny_model(), 32)).all()  # written out: the kernel would raise, not READY

    monkeypatch.setattr(cpu_attention, "_state", {})
    monkeypatch.setattr(cpu_attention, "_cpu_has_avx512_bf16", lambda: False)
    assert cpu_attention.prepare() is False
    assert cpu_attention.reason() == "the CPU has no AVX512-BF16 instructions"


def test_a_cpu_bf16_step_runner_says_when_the_kernel_is_missing(monkeypatch):
    from types import SimpleNamespace

    from mlmlab.engine.step import StepRunner

    model = tiny_model()
    compiled = SimpleNamespace(_orig_mod=model)  # what torch.compile returns, as far as StepRunner looks
    monkeypatch.setattr(cpu_attention, "prepare", lambda: False)
    monkeypatch.setattr(cpu_attention, "reason", lambda: "the CPU has no AVX512-BF16 instructions")

    messages = []

    def runner(precision="bf16", compiled_model=compiled):
        return StepRunner(model, None, None, torch.device("cpu"), precision, None, None, None, compiled=compiled_model,
                          on_message=messages.append)

    note = runner().fused_attention_note
    assert note == "fused CPU attention unavailable (the CPU has no AVX512-BF16 instructions); using written-out attention"
    assert messages == [note]  # said once, where the run prints its messages
    assert runner(precision="fp32").fused_attention_note is None
    assert runner(compiled_model=None).fused_attention_note == runner().fused_attention_note  # eager steps too


def test_a_step_runner_says_so_while_the_kernel_compiles(monkeypatch):
    import time

    from mlmlab.engine import step
    from mlmlab.engine.step import StepRunner

    model = tiny_model()
    messages = []
    monkeypatch.setattr(step, "KERNEL_NOTICE_S", 0.5)

    def runner_with_prepare(seconds: float):
        messages.clear()
        monkeypatch.setattr(cpu_attention, "prepare", lambda: time.sleep(seconds) or True)
        StepRunner(model, None, None, torch.device("cpu"), "bf16", None, None, None, on_message=messages.append)
        return messages

    assert runner_with_prepare(0.0) == []  # cached: nothing to say
    assert runner_with_prepare(0.8) == [step.KERNEL_NOTICE]
