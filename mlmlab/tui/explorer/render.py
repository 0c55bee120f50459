"""Pure functions from prediction results to Rich `Text` (never markup, which would swallow `[MASK]`)."""

from __future__ import annotations

from rich.text import Text

from mlmlab.notation import MASK_TEXT, MaskedText
from mlmlab.predict.results import AttentionMap, PositionPrediction, Prediction
from mlmlab.tokenizer import UNK
from mlmlab.tui.explorer.worker import Side
from mlmlab.tui.formatting import KIND_STYLES, bar, kind_legend
from mlmlab.vocab import MASKED, RANDOM, token_glyph

RIGHT, WRONG, NEUTRAL = "bold green", "bold red", "bold yellow"
DISAGREE = "underline on dark_magenta"
HEAT_SHADES = " ·░▒▓█"


def legend_text() -> Text:
    """The colours of the sentence (mask kinds) and of the filled sentences (right, wrong, disagree)."""
    text = Text("hidden: ", style="dim")
    text.append_text(kind_legend())
    text.append("  filled: ", style="dim")
    for label, style in (("right", RIGHT), ("wrong", WRONG), ("no answer", NEUTRAL), ("runs disagree", DISAGREE)):
        text.append(label, style=style)
        text.append(" ")
    return text


def filled_text(prediction: Prediction, disagree: tuple[int, ...] = ()) -> Text:
    """The sentence with hidden positions filled: right green, wrong red, no known answer yellow."""
    chosen = {p.index: p for p in prediction.positions}
    text = Text()
    for i, slot in enumerate(prediction.masked.slots):
        p = chosen.get(i)
        if p is None:
            text.append(slot.answer if slot.answer is not None else "?")
            continue
        style = {True: RIGHT, False: WRONG, None: NEUTRAL}[p.correct]
        text.append(token_glyph(p.choice), style=f"{style} {DISAGREE}" if i in disagree else style)
    return text


def model_input_text(masked: MaskedText, prediction: Prediction | None) -> Text:
    """What the model reads: [MASK]s, random tokens and [UNK]s written out."""
    if prediction is not None and prediction.masked == masked:
        start, end = prediction.window
        tokens = list(prediction.model_input)
    else:  # before the first prediction: no vocabulary yet, so no [UNK]s
        start, end = 0, len(masked)
        tokens = [MASK_TEXT if s.kind == MASKED else (s.shown or "") if s.kind == RANDOM else s.answer or "" for s in masked.slots]
    text = Text("model reads: ", style="dim")
    if start:
        text.append("… ", style="dim")
    for slot, token in zip(masked.slots[start:end], tokens):
        text.append(token, style="bold red" if token == UNK else KIND_STYLES.get(slot.kind, ""))
    if end < len(masked):
        text.append(" …", style="dim")
    return text


def side_text(side: Side, disagree: tuple[int, ...], bar_width: int) -> Text:
    """One checkpoint's predictions: a heading, the filled sentence, one block per hidden position."""
    prediction, ref = side.prediction, side.ref
    text = Text(ref.label, style="bold")
    if ref.eval_loss is not None:
        text.append(f" · eval loss {ref.eval_loss:.3f}", style="dim")
    if ref.eval_acc is not None:
        text.append(f" · acc {ref.eval_acc:.1%}", style="dim")
    text.append("\nfilled  ")
    text.append_text(filled_text(prediction, disagree))
    summary = []
    if prediction.n_known:
        summary.append(f"{prediction.n_correct} of {prediction.n_known} right")
    if prediction.loss is not None:
        summary.append(f"loss {prediction.loss:.3f}")
    if disagree:
        summary.append(f"disagrees at {len(disagree)} of {len(prediction.positions)}")
    summary.append(f"{side.predict_ms:.0f} ms" + (f" (loaded in {side.load_seconds:.2f} s)" if side.load_seconds else ""))
    text.append("\n" + " · ".join(summary) + "\n", style="dim")
    for p in prediction.positions:
        text.append("\n")
        text.append_text(position_text(p, p.index in disagree, bar_width))
        text.append("\n")
    return text


def position_text(p: PositionPrediction, disagrees: bool, bar_width: int) -> Text:
    """One hidden position: its answer, what the model saw, and the top candidates as bars."""
    text = Text(f"pos {p.index}", style=DISAGREE if disagrees else "bold")
    text.append("  answer ")
    text.append(token_glyph(p.answer) if p.answer is not None else "unknown", style="bold" if p.answer is not None else "dim")
    text.append("  saw ")
    text.append(p.shown, style=KIND_STYLES.get(p.kind, ""))
    if p.answer_rank is not None:
        text.append(f"  rank {p.answer_rank} · p {p.answer_probability:.3f}", style=RIGHT if p.answer_rank == 1 else "")
    if p.fill_pass is not None:
        text.append(f"  filled in pass {p.fill_pass}", style="dim")
    for c in p.top:
        text.append("\n  ")
        mark = p.answer is not None and c.token == p.answer
        text.append(f"{token_glyph(c.token):>2}", style=RIGHT if mark else "bold")
        text.append(" " + bar(c.probability, bar_width), style="green" if mark else "blue")
        text.append(f" {c.probability:6.1%}")
    return text


def heatmap_text(attention: AttentionMap, masked: MaskedText, cursor: int) -> Text:
    """Rows for the hidden positions and the cursor; a column per token the model read."""
    offset = attention.offset
    layer = "avg of all layers" if attention.layer is None else f"layer {attention.layer + 1}/{attention.n_layers}"
    head = "avg of all heads" if attention.head is None else f"head {attention.head + 1}/{attention.n_heads}"
    text = Text(f"attention · {layer} (l) · {head} (h) · each row: where that position looked, darkest = most\n\n", style="bold")
    label_width = 10
    text.append(" " * label_width)
    for token in attention.tokens:
        text.append(token_glyph(token), style="bold")
    text.append("\n")
    rows = sorted(set(masked.hidden) | ({cursor} if offset <= cursor < offset + len(attention.tokens) else set()))
    for index in rows:
        local = index - offset
        if not 0 <= local < len(attention.tokens):
            continue
        label = f"{index:>4} {token_glyph(attention.tokens[local])}"
        text.append(f"{label:<{label_width}}", style="reverse" if index == cursor else KIND_STYLES.get(masked.slots[index].kind, ""))
        text.append_text(heat_row(attention, local))
        text.append("\n")
    return text


def heat_row(attention: AttentionMap, local: int) -> Text:
    """One query position's weights as shades, then the three tokens it looked at most."""
    weights = attention.weights[local]
    top = max(weights) or 1.0
    text = Text()
    for w in weights:
        level = min(len(HEAT_SHADES) - 1, round(w / top * (len(HEAT_SHADES) - 1)))
        text.append(HEAT_SHADES[level], style="bold red" if level == len(HEAT_SHADES) - 1 else "red")
    best = sorted(range(len(weights)), key=weights.__getitem__, reverse=True)[:3]
    text.append("  " + "  ".join(f"{token_glyph(attention.tokens[j])}@{j + attention.offset} {weights[j]:.2f}" for j in best),
                style="dim")
    return text
