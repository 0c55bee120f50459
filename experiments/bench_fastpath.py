"""Each fast-path item of mlmlab's training step, measured against the step without it.

    python experiments/bench_fastpath.py                       # seed-sized model, every item
    python experiments/bench_fastpath.py --config d256 --items bf16,compile
    python experiments/bench_fastpath.py --threads 1 --rounds 9

Every variant is mlmlab's real StepRunner at its defaults with exactly one thing changed back (or,
for items that are off by default, turned on). Each variant trains in its own process (sharing one
process, variants disturbed each other) and they take turns; a row gives the
variant's median tokens/s and the median over rounds of default ÷ variant within a round, i.e. how
much faster the default is than the step without the item. Rounds in which other processes used
more than 5% of the CPUs are set aside when at least three clean ones remain.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch import nn

import mlmlab.model as model_module
from mlmlab.bench import build_setup
from mlmlab.benchharness import IsolatedStep, alternate
from mlmlab.devices import resolve_device, resolve_precision

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_vs_hf import CONFIGS, resized_seed, token_stream  # noqa: E402


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class SplitQKV(nn.Module):
    """Three projections instead of one fused QKV (the usual layout, e.g. Hugging Face BERT's),
    concatenated into the fused layout that the attention (kernel or written out) reads."""

    def __init__(self, fused: nn.Linear):
        super().__init__()
        C = fused.in_features
        self.q, self.k, self.v = (nn.Linear(C, C, bias=False) for _ in range(3))
        with torch.no_grad():
            for i, lin in enumerate((self.q, self.k, self.v)):
                lin.weight.copy_(fused.weight[i * C:(i + 1) * C])

    def forward(self, x):
        return torch.cat([self.q(x), self.k(x), self.v(x)], dim=-1)


def split_qkv(model) -> None:
    for block in model.blocks:
        attn = block.attn
        attn.qkv = SplitQKV(attn.qkv).to(attn.qkv.weight.device)


def biases_everywhere(model) -> None:
    for block in model.blocks:
        attn = block.attn
        for name in ("qkv", "proj"):
            old = getattr(attn, name)
            new = nn.Linear(old.in_features, old.out_features, bias=True).to(old.weight.device)
            with torch.no_grad():
                new.weight.copy_(old.weight)
                new.bias.zero_()
            setattr(attn, name, new)


def full_last_block(model) -> None:
    """The last block at every position; the head still only at the chosen ones."""
    encode = model.encode

    def encode_all(ids, attn_mask=None, positions=None):
        hidden = encode(ids, attn_mask)
        return hidden if positions is None else hidden.reshape(-1, hidden.shape[-1])[positions]

    model.encode = encode_all


def full_head(model) -> None:
    """Head and loss at every position (ignore_index elsewhere), as Hugging Face's BertForMaskedLM."""
    forward = model.forward

    def forward_full(ids, labels=None, positions=None, attn_mask=None):
        logits, loss = forward(ids, labels, None, attn_mask)
        return logits.reshape(-1, logits.shape[-1])[positions], loss

    model.forward = forward_full


def on_model(change):
    """A change to the model's structure; the optimizer is rebuilt over the new parameters."""

    def apply(setup):
        from mlmlab.engine.step import build_optimizer

        change(setup.runner.model)
        setup.runner.optimizer = build_optimizer(setup.runner.model, setup.cfg, setup.device)

    return apply


def sdpa_under_cpu_bf16(setup) -> None:
    model_module.FUSED_CPU_ATTENTION = False  # module-wide, like fp32_residual
    step = setup.runner.step

    def step_with_sdpa(*args, **kwargs):
        saved = model_module._cpu_bf16
        model_module._cpu_bf16 = lambda x: False
        try:
            return step(*args, **kwargs)
        finally:
            model_module._cpu_bf16 = saved

    setup.runner.step = step_with_sdpa


def fp32_residual(setup) -> None:
    model_module.BF16_RESIDUAL = False  # a module-wide switch: safe, this variant has its process to itself


def written_out_attention(setup) -> None:
    model_module.FUSED_CPU_ATTENTION = False  # module-wide, like fp32_residual


def inductor_gelu(setup) -> None:
    model_module.ATEN_CPU_GELU = False  # module-wide, like fp32_residual


def foreach_adamw(setup) -> None:
    opt = setup.runner.optimizer
    groups = [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in opt.param_groups]
    setup.runner.optimizer = type(opt)(groups, lr=opt.defaults["lr"], betas=opt.defaults["betas"],
                                       eps=opt.defaults["eps"], foreach=True)


def sync_every_step(setup) -> None:
    step = setup.runner.step

    def step_and_read(*args, **kwargs):
        out = step(*args, **kwargs)
        out.loss.item()  # what printing the loss every step would do
        return out

    setup.runner.step = step_and_read


# name: (what the default does, what the variant does instead, how to build the variant)
ITEMS = {
    "positions": ("head, loss and the last block's tail only at the masked positions",
                  "all of them at every position (as BertForMaskedLM)", on_model(full_head)),
    "last_block": ("last block after attention only at the masked positions", "last block everywhere",
                   on_model(full_last_block)),
    "fused_qkv": ("one fused QKV projection", "separate Q, K, V projections, concatenated", on_model(split_qkv)),
    "no_bias": ("no bias in the attention projections", "biases there too", on_model(biases_everywhere)),
    "bf16": ("bf16 autocast (auto on CPUs with AVX-512 BF16 or AMX, and CUDA)", "fp32", {"precision": "fp32"}),
    "bf16_residual": ("bf16 residual stream under bf16 autocast", "fp32 residual stream", fp32_residual),
    "cpu_bf16_attention": ("attention in mlmlab's kernel (or written out) under CPU bf16", "SDPA under CPU bf16",
                           sdpa_under_cpu_bf16),
    "fused_cpu_attention": ("attention in mlmlab's fused CPU kernel (bf16, head_dim 16/32/64)",
                            "written out: batched matmuls and softmax", written_out_attention),
    "aten_gelu": ("under compile on a CPU, ATen's GELU kernel", "inductor's generated GELU", inductor_gelu),
    "fused_adamw": ("fused AdamW", "foreach AdamW", foreach_adamw),
    "kept_memory": ("malloc keeps freed memory (devices.keep_freed_memory)", "glibc's default: freed blocks go back to the OS",
                    {"keep_freed": False}),
    "no_sync": ("no host sync in the step", ".item() every step", sync_every_step),
    "compile": ("torch.compile (auto: CUDA, and CPU runs of 10+ minutes)", "eager", {"compile": "off"}),
}
# Items measured with torch.compile on in both variants (compiling every variant would take minutes).
COMPILED = {"compile", "fused_cpu_attention", "aten_gelu"}


def build(c: dict, device: str, precision: str | None = None, compile_mode: str = "off", item: str | None = None,
          threads: int | None = None, keep_freed: bool = True):
    """One variant's training step, built inside its own worker process (see IsolatedStep)."""
    from mlmlab import devices
    from mlmlab.devices import resolve_precision

    if threads:
        torch.set_num_threads(threads)
    devices.KEEP_FREED_MEMORY = keep_freed  # process-wide, and this process is the variant's own
    device = torch.device(device)
    cfg = resized_seed(c, f"train.compile={compile_mode}")
    precision = precision or resolve_precision("auto", device)
    setup = build_setup(cfg, device, precision, token_stream(c["vocab"]), c["vocab"])
    if item is not None:
        ITEMS[item][2](setup)
    counter = iter(range(10**9))
    tokens = c["batch_size"] * c["seq_len"]

    def step():
        setup.window.add(setup.runner.step(next(counter) + 200), tokens)

    return step


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="seed", choices=list(CONFIGS))
    p.add_argument("--items", default=",".join(ITEMS), help="comma-separated: " + ", ".join(ITEMS))
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--threads", type=int)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    unknown = sorted(set(args.items.split(",")) - set(ITEMS))
    if unknown:
        p.error(f"unknown item {', '.join(unknown)}: choose from {', '.join(ITEMS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    c = CONFIGS[args.config]
    rows = []
    for name in args.items.split(","):
        what, without, change = ITEMS[name]
        base_compile = "on" if name in COMPILED else "off"
        precision = resolve_precision("auto", device)
        default = IsolatedStep(build, c, str(device), precision, base_compile, None, args.threads)
        if isinstance(change, dict):
            variant = IsolatedStep(build, c, str(device), change.get("precision", precision),
                                   change.get("compile", base_compile), None, args.threads, change.get("keep_freed", True))
        else:
            variant = IsolatedStep(build, c, str(device), precision, base_compile, name, args.threads)
        try:
            for f in (default, variant):
                f.run(3)
            fig = alternate({"default": default, "without": variant}, rounds=args.rounds, steps=args.steps,
                            tokens_per_step=c["batch_size"] * c["seq_len"])
        finally:
            default.close()
            variant.close()
        used, clean = fig.rounds_used()
        row = {"item": name, "default": what, "without": without, "precision": precision,
               "tokens_per_s_default": fig.median("default", used), "tokens_per_s_without": fig.median("without", used),
               "speedup": fig.ratio("default", "without", used), "rounds": len(used), "clean": clean}
        rows.append(row)
        log(f"{name}: {row['speedup']:.2f}x ({row['tokens_per_s_default']:,.0f} vs {row['tokens_per_s_without']:,.0f} tokens/s, "
            f"{row['rounds']} {'clean' if clean else 'disturbed'} rounds)")
    print(f"\nFast path, config {args.config} ({c['batch_size']}x{c['seq_len']}, d{c['d_model']} L{c['n_layers']}); "
          f"{device}, {torch.get_num_threads()} threads, torch {torch.__version__}; compile off except in the rows of {', '.join(sorted(COMPILED))}\n")
    print("| item | default | without it | tokens/s with | without | speed-up |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['item']} | {r['default']} | {r['without']} | {r['tokens_per_s_default']:,.0f} | "
              f"{r['tokens_per_s_without']:,.0f} | {r['speedup']:.2f}x |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
