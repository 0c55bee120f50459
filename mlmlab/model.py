"""A Transformer encoder for masked language modelling, small enough to read top to bottom.

Pre-LayerNorm blocks, learned positions, GELU, a fused QKV projection, attention through
`scaled_dot_product_attention` (under bf16 autocast on a CPU: mlmlab's fused kernel, or written out),
and an output head tied to the token embedding. Weights start
from BERT's normal(0, 0.02); residual output projections are scaled down by √(2·n_layers) as in
GPT-2, so deep stacks start near the identity. Unlike the labml reference, embeddings are *not*
multiplied by √d_model, which would drown the position signal.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mlmlab import cpu_attention
from mlmlab.masking import IGNORE


@dataclass(frozen=True)
class ModelArgs:
    vocab_size: int
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 512
    dropout: float = 0.0
    max_seq_len: int = 128
    pad_id: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


class SelfAttention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_heads = args.n_heads
        self.qkv = nn.Linear(args.d_model, 3 * args.d_model, bias=False)
        self.proj = nn.Linear(args.d_model, args.d_model, bias=False)
        self.dropout = args.dropout

    def split_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self._heads(self.qkv(x))

    def _heads(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, T, C3 = qkv.shape
        q, k, v = qkv.view(B, T, 3, self.n_heads, C3 // (3 * self.n_heads)).permute(2, 0, 3, 1, 4)
        return q, k, v  # each (B, heads, T, head_dim)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None, rows: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, C) outputs; with `rows` (flat indices into B*T) only those rows, (n, C)."""
        B, T, C = x.shape
        qkv = self.qkv(x)
        dropout = self.dropout if self.training else 0.0
        if attn_mask is None and _fused_cpu_attention(qkv, C // self.n_heads, dropout):
            y = cpu_attention.attention(qkv, self.n_heads)
        else:
            q, k, v = self._heads(qkv)
            if _cpu_bf16(x):
                y = _math_attention(q, k, v, attn_mask, dropout)
            else:
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout)
            y = y.transpose(1, 2).reshape(B, T, C)
        if rows is not None:
            y = y.reshape(B * T, C)[rows]
        return self.proj(y)

    def weights(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        """The attention probabilities (B, heads, T, T), computed explicitly for inspection."""
        q, k, _ = self.split_heads(x)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
        if attn_mask is not None:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        return scores.softmax(dim=-1)


# Under bf16 autocast the residual stream is kept in bf16 as well (weights, optimizer state and the
# loss stay fp32): it saves a cast before every projection and halves the traffic of every norm and
# residual add, with no loss of held-out accuracy (measured: experiments/README-performance.md).
BF16_RESIDUAL = True


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype autocast computes in for x's device (x's own dtype outside autocast)."""
    kind = x.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype


def _cpu_bf16(x: torch.Tensor) -> bool:
    """Under bf16 autocast on a CPU, where SDPA's bf16 kernels lose to plain bf16 matmuls (measured)."""
    return x.device.type == "cpu" and torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


# Under CPU bf16 autocast, attention runs in mlmlab/cpu_attention.cpp where it can (head_dim 16, 32
# or 64, no padding mask, no attention dropout, a CPU with AVX512-BF16, the kernel compiled by
# cpu_attention.prepare() before training starts): it beats the written-out path in compiled and
# eager steps alike (measured: experiments/README-performance.md).
FUSED_CPU_ATTENTION = True


def fused_cpu_attention_fits(head_dim: int, seq_len: int, dropout: float) -> bool:
    """Whether CPU bf16 attention of this shape, with no padding mask, runs in the kernel."""
    return FUSED_CPU_ATTENTION and not dropout and cpu_attention.supports(seq_len, head_dim)


def _fused_cpu_attention(qkv: torch.Tensor, head_dim: int, dropout: float) -> bool:
    return (qkv.dtype == torch.bfloat16 and qkv.device.type == "cpu"
            and fused_cpu_attention_fits(head_dim, qkv.shape[1], dropout))


def _math_attention(q, k, v, attn_mask: torch.Tensor | None, dropout: float) -> torch.Tensor:
    """softmax(QKᵀ/√d)·V written out: bf16 batched matmuls, the softmax's sums accumulated in fp32."""
    scores = (q * (1.0 / math.sqrt(q.shape[-1]))) @ k.transpose(-2, -1)
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    probs = scores.softmax(dim=-1)
    if dropout:
        probs = F.dropout(probs, dropout)
    return probs @ v


# Under torch.compile on a CPU, large GELUs call ATen's own kernel instead of the loop inductor
# generates for them. A custom op keeps inductor from decomposing it, but costs its fusions, so it
# pays only for large GELUs: from 2M elements up (measured: experiments/README-performance.md).
ATEN_CPU_GELU = True
ATEN_GELU_MIN_ELEMENTS = 2**21


@torch.library.custom_op("mlmlab::gelu", mutates_args=())
def _aten_gelu(x: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten.gelu.default(x)


@torch.library.custom_op("mlmlab::gelu_backward", mutates_args=())
def _aten_gelu_backward(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten.gelu_backward.default(grad, x)


_aten_gelu.register_fake(torch.empty_like)
_aten_gelu_backward.register_fake(lambda grad, x: torch.empty_like(grad))
_aten_gelu.register_autograd(lambda ctx, grad: _aten_gelu_backward(grad, ctx.saved_tensors[0]),
                             setup_context=lambda ctx, inputs, output: ctx.save_for_backward(inputs[0]))


def gelu(x: torch.Tensor) -> torch.Tensor:
    if (ATEN_CPU_GELU and x.device.type == "cpu" and x.numel() >= ATEN_GELU_MIN_ELEMENTS
            and torch.compiler.is_compiling()):
        return _aten_gelu(x)
    return F.gelu(x)


class Block(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.ln1 = nn.LayerNorm(args.d_model)
        self.attn = SelfAttention(args)
        self.ln2 = nn.LayerNorm(args.d_model)
        self.ff_in = nn.Linear(args.d_model, args.d_ff)
        self.ff_out = nn.Linear(args.d_ff, args.d_model)
        self.drop = nn.Dropout(args.dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None, rows: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, C) outputs; with `rows` (flat indices into B*T) only those rows, (n, C).

        Every row's keys and values are still computed (all rows attend to them); only the query
        side after attention (output projection, residual, feed-forward) is restricted to `rows`.
        """
        attended = self.drop(self.attn(self.ln1(x), attn_mask, rows))
        x = x + attended if rows is None else x.reshape(-1, x.shape[-1])[rows] + attended
        return x + self.drop(self.ff_out(gelu(self.ff_in(self.ln2(x)))))


class MaskedLM(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.tok_emb = nn.Embedding(args.vocab_size, args.d_model)
        self.pos_emb = nn.Embedding(args.max_seq_len, args.d_model)
        self.drop = nn.Dropout(args.dropout)
        self.blocks = nn.ModuleList(Block(args) for _ in range(args.n_layers))
        self.ln_f = nn.LayerNorm(args.d_model)
        self.head_bias = nn.Parameter(torch.zeros(args.vocab_size))  # the head's weight is tok_emb's
        self.apply(self._init_weights)
        for block in self.blocks:
            for residual_out in (block.attn.proj, block.ff_out):
                nn.init.normal_(residual_out.weight, std=0.02 / math.sqrt(2 * args.n_layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def attention_mask(self, ids: torch.Tensor) -> torch.Tensor | None:
        """(B, 1, 1, T) keys that are not padding; None when the caller knows there is none."""
        return (ids != self.args.pad_id)[:, None, None, :]

    def encode(self, ids: torch.Tensor, attn_mask: torch.Tensor | None = None,
               positions: torch.Tensor | None = None) -> torch.Tensor:
        """Final hidden states (B, T, C); with `positions` (flat indices into B*T) only those, (n, C).

        With `positions`, the last block computes its output only there: its other outputs feed
        nothing (no later layer reads them, the head reads only `positions`), so skipping them
        leaves the chosen outputs and every gradient exactly as they were.
        """
        T = ids.shape[1]
        x = self.drop(self.tok_emb(ids) + self.pos_emb.weight[:T])
        if BF16_RESIDUAL:
            x = x.to(_compute_dtype(x))
        *body, last = self.blocks
        for block in body:
            x = block(x, attn_mask)
        return self.ln_f(last(x, attn_mask, positions))

    def logits_at(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden, self.tok_emb.weight, self.head_bias)

    def forward(
        self,
        ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits and the mean cross-entropy over labelled positions.

        With `positions` (flat indices into B*T of the chosen positions) the output head, and the
        last block after its attention, run only there: for 15% masking that skips 85% of that
        work. Logits are then (n_chosen, V); without it they are (B, T, V).
        """
        logits = self.logits_at(self.encode(ids, attn_mask, positions))
        targets = labels.reshape(-1)[positions] if labels is not None and positions is not None else labels
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=IGNORE)
        return logits, loss

    @torch.no_grad()
    def attention_maps(self, ids: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attention probabilities of every layer: (layers, B, heads, T, T)."""
        T = ids.shape[1]
        x = self.tok_emb(ids) + self.pos_emb.weight[:T]
        maps = []
        for block in self.blocks:
            maps.append(block.attn.weights(block.ln1(x), attn_mask))
            x = block(x, attn_mask)
        return torch.stack(maps)
