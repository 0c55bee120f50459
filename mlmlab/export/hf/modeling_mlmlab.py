"""An mlmlab masked language model for Hugging Face `transformers` (remote code: load it with
`trust_remote_code=True`).

Written by `mlmlab export` beside the weights, and self-contained: it imports only torch and
transformers. The network is mlmlab's own (mlmlab/model.py), layer for layer, so its fp32 logits
equal mlmlab's: pre-LayerNorm blocks, learned positions, one fused bias-free QKV projection, a
bias-free output projection, a GELU feed-forward with biases, a final LayerNorm and an output head
tied to the token embedding (with a bias of its own). No stock architecture is this network
exactly: every stock masked LM (BERT, RoBERTa-PreLayerNorm, ESM, MegatronBERT, ...) puts a
dense + activation + LayerNorm transform before its decoder, which mlmlab does not have.

The model reads windows of a token stream: there is no [CLS] or [SEP], and the tokenizer adds none.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput, MaskedLMOutput


class MlmlabConfig(PretrainedConfig):
    model_type = "mlmlab"

    def __init__(
        self,
        vocab_size: int = 70,
        hidden_size: int = 128,
        num_hidden_layers: int = 4,
        num_attention_heads: int = 4,
        intermediate_size: int = 512,
        max_position_embeddings: int = 128,
        dropout: float = 0.0,
        layer_norm_eps: float = 1e-5,
        initializer_range: float = 0.02,
        hidden_act: str = "gelu",
        pad_token_id: int = 0,
        mask_token_id: int = 1,
        unk_token_id: int = 2,
        tie_word_embeddings: bool = True,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.max_position_embeddings = max_position_embeddings
        self.dropout = dropout
        self.layer_norm_eps = layer_norm_eps
        self.initializer_range = initializer_range
        self.hidden_act = hidden_act  # GELU, erf form (torch's default), as mlmlab trains with
        self.mask_token_id = mask_token_id
        self.unk_token_id = unk_token_id
        super().__init__(pad_token_id=pad_token_id, tie_word_embeddings=tie_word_embeddings, **kwargs)


class MlmlabSelfAttention(nn.Module):
    def __init__(self, config: MlmlabConfig):
        super().__init__()
        if config.hidden_size % config.num_attention_heads:
            raise ValueError(f"hidden_size {config.hidden_size} is not a multiple of num_attention_heads {config.num_attention_heads}")
        self.n_heads = config.num_attention_heads
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=False)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None, output_attentions: bool = False):
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, C // self.n_heads).permute(2, 0, 3, 1, 4)
        dropout = self.dropout if self.training else 0.0
        weights = None
        if output_attentions:  # written out, so the probabilities can be returned
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
            if attn_mask is not None:
                scores = scores.masked_fill(~attn_mask, float("-inf"))
            weights = scores.softmax(dim=-1)
            y = F.dropout(weights, dropout) @ v if dropout else weights @ v
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout)
        return self.proj(y.transpose(1, 2).reshape(B, T, C)), weights


class MlmlabBlock(nn.Module):
    def __init__(self, config: MlmlabConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attn = MlmlabSelfAttention(config)
        self.ln2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.ff_in = nn.Linear(config.hidden_size, config.intermediate_size)
        self.ff_out = nn.Linear(config.intermediate_size, config.hidden_size)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None, output_attentions: bool = False):
        attended, weights = self.attn(self.ln1(x), attn_mask, output_attentions)
        x = x + self.drop(attended)
        return x + self.drop(self.ff_out(F.gelu(self.ff_in(self.ln2(x))))), weights


class MlmlabPreTrainedModel(PreTrainedModel):
    config_class = MlmlabConfig
    base_model_prefix = "mlmlab"
    supports_gradient_checkpointing = False

    def _init_weights(self, module: nn.Module) -> None:
        """mlmlab's initialisation (BERT's normal(0, 0.02)); only weights missing from a file get it."""
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def _use_return_dict(config: PretrainedConfig, return_dict: bool | None) -> bool:
    if return_dict is not None:
        return return_dict
    return getattr(config, "return_dict", True)


class MlmlabModel(MlmlabPreTrainedModel):
    """The encoder: token and position embeddings, the blocks and the final LayerNorm."""

    def __init__(self, config: MlmlabConfig):
        super().__init__(config)
        self.tok_emb = nn.Embedding(config.vocab_size, config.hidden_size)
        self.pos_emb = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(MlmlabBlock(config) for _ in range(config.num_hidden_layers))
        self.ln_f = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.tok_emb

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.tok_emb = value

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ):
        if input_ids is None:
            raise ValueError("MlmlabModel needs input_ids")
        T = input_ids.shape[1]
        if T > self.config.max_position_embeddings:
            raise ValueError(f"the input is {T} tokens, longer than this model reads at once "
                             f"(max_position_embeddings {self.config.max_position_embeddings}): truncate it")
        output_attentions = bool(output_attentions if output_attentions is not None else self.config.output_attentions)
        output_hidden_states = bool(output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states)
        # mlmlab's padding mask: keys that are not [PAD]. A batch with no padding attends everywhere
        # (no mask at all, as mlmlab predicts), so its logits are computed exactly as mlmlab's are.
        keys = attention_mask.bool() if attention_mask is not None else input_ids != self.config.pad_token_id
        attn_mask = None if bool(keys.all()) else keys[:, None, None, :]
        positions = self.pos_emb.weight[:T] if position_ids is None else self.pos_emb(position_ids)
        x = self.drop(self.tok_emb(input_ids) + positions)
        hidden_states, attentions = [], []
        for block in self.blocks:
            if output_hidden_states:
                hidden_states.append(x)
            x, weights = block(x, attn_mask, output_attentions)
            if output_attentions:
                attentions.append(weights)
        x = self.ln_f(x)
        if output_hidden_states:
            hidden_states.append(x)
        hidden = tuple(hidden_states) if output_hidden_states else None
        attn = tuple(attentions) if output_attentions else None
        if not _use_return_dict(self.config, return_dict):
            return tuple(v for v in (x, hidden, attn) if v is not None)
        return BaseModelOutput(last_hidden_state=x, hidden_states=hidden, attentions=attn)


class MlmlabForMaskedLM(MlmlabPreTrainedModel):
    """The encoder and its output head, whose weight is the token embedding (tied) and whose bias is its own."""

    _tied_weights_keys = {"lm_head.weight": "mlmlab.tok_emb.weight"}

    def __init__(self, config: MlmlabConfig):
        super().__init__(config)
        self.mlmlab = MlmlabModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=True)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.mlmlab.tok_emb

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.mlmlab.tok_emb = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ):
        """Logits (B, T, V); with `labels` (-100 where not scored), the mean cross-entropy as `loss`."""
        out = self.mlmlab(input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          output_attentions=output_attentions, output_hidden_states=output_hidden_states, return_dict=True)
        logits = self.lm_head(out.last_hidden_state)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1).to(logits.device),
                                   ignore_index=-100)
        if not _use_return_dict(self.config, return_dict):
            rest = tuple(v for v in (out.hidden_states, out.attentions) if v is not None)
            return ((loss,) if loss is not None else ()) + (logits,) + rest
        return MaskedLMOutput(loss=loss, logits=logits, hidden_states=out.hidden_states, attentions=out.attentions)
