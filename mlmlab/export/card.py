"""The exported model's README.md: a model card written from the run (its config, how far it
trained, its held-out figures, the corpus and the masking), plain Python with no torch.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

import tomli_w

EVAL_RATES = "15% of positions chosen; of those 80% [MASK], 10% a random token, 10% unchanged"


@dataclass(frozen=True)
class CardFacts:
    """What the card says: the run, the checkpoint and its figures (None where not recorded)."""

    run_id: int
    run_name: str
    step: int
    tokens: int | None
    elapsed_s: float | None
    n_params: int
    config: dict[str, Any]
    model_args: dict[str, Any]
    tokenizer_kind: str
    eval: dict[str, float] = field(default_factory=dict)  # eval_loss, eval_acc, eval_bpc at this step
    eval_step: int | None = None  # the step those figures were measured at


def corpus_words(source: str) -> str:
    """The corpus as the card names it. A file or folder is named by its last part only: the full
    path often names a user's home folder, which has no place in a card meant to be shared."""
    if source == "builtin":
        return "mlmlab's built-in corpus (the Python standard library's docstrings and interactive-help topics)"
    return f"`{PurePath(source).name or source}` (a local text corpus)"


def shareable_config(config: dict[str, Any]) -> dict[str, Any]:
    cfg = copy.deepcopy(config)
    data = cfg.get("data")
    if isinstance(data, dict) and isinstance(data.get("source"), str) and data["source"] != "builtin":
        data["source"] = PurePath(data["source"]).name or data["source"]
    return cfg


def model_card(facts: CardFacts) -> str:
    cfg = facts.config
    data, mask, train = (cfg.get(k, {}) for k in ("data", "mask", "train"))
    args = facts.model_args
    char = facts.tokenizer_kind == "char"
    unit = "character" if char else "token"
    example = "The qu[MASK]ck brown fox." if char else "The quick [MASK] fox."
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: fill-mask",
        "tags:",
        "- mlmlab",
        "- masked-lm",
        f"- {'char-level' if char else facts.tokenizer_kind}",
        "---",
        "",
        f"# {facts.run_name}: a masked language model trained with mlmlab",
        "",
        f"Run {facts.run_id} (`{facts.run_name}`) at step {facts.step:,}"
        + (f", after {facts.tokens:,} training tokens" if facts.tokens is not None else "")
        + (f" ({_duration(facts.elapsed_s)} of training)" if facts.elapsed_s and facts.elapsed_s >= 1 else "")
        + f"; {facts.n_params:,} parameters, a {facts.tokenizer_kind} vocabulary of {args['vocab_size']:,}.",
        "",
        "## Use it",
        "",
        "```python",
        "from transformers import pipeline",
        "",
        'fill = pipeline("fill-mask", model="PATH/TO/THIS/FOLDER", trust_remote_code=True)',
        f'print(fill("{example}"))',
        "```",
        "",
        "The network is mlmlab's own, shipped as `modeling_mlmlab.py` (loaded with `trust_remote_code=True`: read it "
        "first, it is short). It reads at most "
        f"{args['max_seq_len']} {unit}s at once. There is no [CLS] or [SEP]: the model was trained on windows of running "
        "text, and the tokenizer adds none.",
    ]
    if char:
        lines += ["", "The vocabulary is characters: each `[MASK]` stands for exactly one character, and spaces and "
                      "newlines are tokens like any other."]
    lines += ["", "The pipeline ranks every token of the vocabulary, [PAD], [MASK] and [UNK] included; "
                  "`mlmlab predict` lists real tokens only (a trained model gives the special tokens almost no probability)."]
    lines += ["", f"## Held-out evaluation (step {facts.eval_step:,})" if facts.eval_step is not None else "## Held-out evaluation", ""]
    if facts.eval:
        lines += ["| loss (nats per token) | accuracy | bits per character |", "|---|---|---|",
                  f"| {_fmt(facts.eval.get('eval_loss'), '.4f')} | {_fmt(facts.eval.get('eval_acc'), '.2%')} "
                  f"| {_fmt(facts.eval.get('eval_bpc'), '.4f')} |",
                  "", f"Measured on fixed held-out windows of the corpus ({_fmt(data.get('valid_fraction'), '.0%')} of it), "
                      f"masked at BERT's rates whatever the training masking ({EVAL_RATES}). Accuracy is the share of "
                      "chosen positions whose top guess is the original token. Bits per character divide the loss by the "
                      "characters the hidden tokens cover, so char and subword models compare."]
    else:
        lines += ["Not evaluated at this checkpoint."]
    lines += [
        "", "## Model", "",
        "| | |", "|---|---|",
        "| architecture | pre-LayerNorm Transformer encoder, learned positions, fused bias-free QKV, GELU, output head tied to the token embedding |",
        f"| layers | {args['n_layers']} |",
        f"| hidden size | {args['d_model']} |",
        f"| attention heads | {args['n_heads']} |",
        f"| feed-forward size | {args['d_ff']} |",
        f"| max sequence length | {args['max_seq_len']} |",
        f"| dropout | {args.get('dropout', 0.0)} |",
        f"| tokenizer | {facts.tokenizer_kind}, {args['vocab_size']:,} entries |",
        f"| parameters | {facts.n_params:,} |",
        "", "## Training data", "",
        f"{corpus_words(str(data.get('source', '?')))}"
        + (f", its first {data['max_chars']:,} characters" if data.get("max_chars") else "")
        + f"; {_fmt(data.get('valid_fraction'), '.0%')} held out for evaluation.",
        "", "## Masking", "",
        f"{_fmt(mask.get('masking_prob'), '.0%')} of positions chosen per window, by the `{mask.get('strategy', 'token')}` "
        f"strategy; a chosen position becomes [MASK], except {_fmt(mask.get('randomize_prob'), '.0%')} that become a random "
        f"token and {_fmt(mask.get('no_change_prob'), '.0%')} left unchanged."
        + (f" Spans: geometric with p = {mask.get('span_p')}, at most {mask.get('span_max_words')} words."
           if mask.get("strategy") == "span" else "")
        + (f" Never masked: {', '.join(repr(t) for t in mask['no_mask_tokens'])}." if mask.get("no_mask_tokens") else ""),
        "", "## Training", "",
        f"{facts.step:,} of {train.get('steps', '?')} steps"
        + (f" (or {train['max_minutes']} minutes)" if train.get("max_minutes") else "")
        + f"; batch {train.get('batch_size', '?')} windows of {train.get('seq_len', '?')} tokens; {train.get('optimizer', '?')}, "
          f"learning rate {train.get('lr', '?')} ({train.get('schedule', '?')}, {train.get('warmup_steps', '?')} warm-up steps), "
          f"weight decay {train.get('weight_decay', '?')}; precision {train.get('precision', '?')}; seed {train.get('seed', '?')}.",
        "", "The run's whole config, as mlmlab resolved it:", "", "```toml",
        tomli_w.dumps(_tomlable(shareable_config(cfg))).rstrip(), "```", "",
    ]
    return "\n".join(lines)


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _duration(seconds: float) -> str:
    minutes = seconds / 60
    return f"{seconds:.0f} s" if minutes < 2 else f"{minutes:.0f} min" if minutes < 120 else f"{minutes / 60:.1f} h"


def _tomlable(value: Any) -> Any:
    """TOML has no null: keys holding None are left out."""
    if isinstance(value, dict):
        return {k: _tomlable(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_tomlable(v) for v in value if v is not None]
    return value
