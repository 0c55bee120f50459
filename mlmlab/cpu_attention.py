"""Fused self-attention for CPU bf16 training: a small C++ kernel, compiled on first use.

With small heads, written-out attention spends most of its time outside the matrix products:
splitting heads, softmax passes over memory, merging heads, and batched matmuls with an inner
dimension of 16. `cpu_attention.cpp` does one (batch, head) pair per thread with every product on
AVX512-BF16 dot-product instructions and the softmax in registers, reading Q, K and V straight from
the fused QKV projection and writing gradients straight back in its layout (timings against the
written-out path: experiments/README-performance.md). Eager and compiled models both call it (see
model.py).

The kernel is compiled with torch.compile's own C++ toolchain (inductor's code cache, which also
caches the library on disk), the first time a model needs it. Where that fails, or the CPU lacks
AVX512-BF16, `prepare()` is False and the model keeps its written-out attention; `reason()` says why.
Registered as custom ops with their own backward, so torch.compile calls the kernel as it is.
"""

from __future__ import annotations

import ctypes
import threading
from pathlib import Path

import torch

from mlmlab.devices import cpu_flags

HEAD_DIMS = (16, 32, 64)  # measured against the written-out path; larger heads are not; T must be a multiple of 32
_SOURCE = Path(__file__).with_name("cpu_attention.cpp")
_lock = threading.Lock()
_state: dict[str, object] = {}


# Set by prepare(), read by the model: a plain global, so torch.compile traces `supports` as a constant.
READY = False


def prepare() -> bool:
    """Compile (or load from the cache) the kernel, before any model traced by torch.compile uses it.

    Returns whether it is available here; when not, `reason()` says why.
    """
    global READY
    READY = _library() is not None
    return READY


def supports(seq_len: int, head_dim: int) -> bool:
    """Whether attention of this shape runs in the kernel (after prepare(); never before)."""
    return READY and head_dim in HEAD_DIMS and seq_len % 32 == 0


def reason() -> str | None:
    """Why the kernel is not available, or None when it is (or has not been tried)."""
    return _state.get("reason")  # type: ignore[return-value]


def _cpu_has_avx512_bf16() -> bool:
    return "avx512_bf16" in cpu_flags()


def _library() -> ctypes.CDLL | None:
    if "lib" in _state:
        return _state["lib"]  # type: ignore[return-value]
    with _lock:
        if "lib" not in _state:
            _state["lib"], _state["reason"] = _build()
    return _state["lib"]  # type: ignore[return-value]


def _build() -> tuple[ctypes.CDLL | None, str | None]:
    if not _cpu_has_avx512_bf16():
        return None, "the CPU has no AVX512-BF16 instructions"
    try:
        from torch._inductor.codecache import CppCodeCache

        lib = CppCodeCache.load(_SOURCE.read_text(), device_type="cpu")
        for fn in (lib.attn_forward, lib.attn_backward):
            fn.restype = None
        return lib, None
    except Exception as exc:  # noqa: BLE001 - no compiler, an old torch: keep the written-out path
        return None, f"compiling {_SOURCE.name} failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})"


def _ptr(t: torch.Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr())


def _dims(qkv: torch.Tensor, n_heads: int) -> tuple[int, int, int, int, int]:
    B, T, C3 = qkv.shape
    C = C3 // 3
    return B, T, C, n_heads, C // n_heads


@torch.library.custom_op("mlmlab::cpu_attention", mutates_args=())
def _attention(qkv: torch.Tensor, n_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    B, T, C, H, D = _dims(qkv, n_heads)
    qkv = qkv.contiguous()
    out, probs = qkv.new_empty(B, T, C), qkv.new_empty(B, H, T, T)
    _library().attn_forward(_ptr(qkv), _ptr(out), _ptr(probs), *(ctypes.c_int64(n) for n in (B, T, H, D)))
    return out, probs


@_attention.register_fake
def _(qkv, n_heads):
    B, T, C, H, _ = _dims(qkv, n_heads)
    return qkv.new_empty(B, T, C), qkv.new_empty(B, H, T, T)


@torch.library.custom_op("mlmlab::cpu_attention_backward", mutates_args=())
def _attention_backward(dout: torch.Tensor, qkv: torch.Tensor, out: torch.Tensor, probs: torch.Tensor,
                        n_heads: int) -> torch.Tensor:
    B, T, C, H, D = _dims(qkv, n_heads)
    dout = dout.to(torch.bfloat16).contiguous()
    dqkv = torch.empty_like(qkv)
    _library().attn_backward(_ptr(dout), _ptr(qkv.contiguous()), _ptr(out), _ptr(probs), _ptr(dqkv),
                             *(ctypes.c_int64(n) for n in (B, T, H, D)))
    return dqkv


@_attention_backward.register_fake
def _(dout, qkv, out, probs, n_heads):
    return torch.empty_like(qkv)


def _setup_context(ctx, inputs, output) -> None:
    qkv, n_heads = inputs
    ctx.n_heads = n_heads
    ctx.save_for_backward(qkv, *output)


def _backward(ctx, dout, dprobs):
    qkv, out, probs = ctx.saved_tensors
    return _attention_backward(dout, qkv, out, probs, ctx.n_heads), None


_attention.register_autograd(_backward, setup_context=_setup_context)


def attention(qkv: torch.Tensor, n_heads: int) -> torch.Tensor:
    """softmax(QKᵀ/√d)·V for a bf16 (B, T, 3·C) fused projection, heads merged: (B, T, C). No mask."""
    B, T, C3 = qkv.shape
    if not (qkv.dtype == torch.bfloat16 and qkv.device.type == "cpu" and C3 % (3 * n_heads) == 0
            and supports(T, C3 // (3 * n_heads))):
        raise ValueError(f"cpu_attention: unsupported input {tuple(qkv.shape)} {qkv.dtype} on {qkv.device} "
                         f"with {n_heads} heads (see supports())")
    return _attention(qkv, n_heads)[0]
