"""Pure functions from prediction results to Rich `Text` (never markup, which would swallow `[MASK]`)."""

from __future__ import annotations

from rich.cells import cell_len
from rich.text import Text

from mlmlab.notation import MASK_TEXT, MaskedText
from mlmlab.predict.results import AttentionMap, ComparisonRow, PositionPrediction, Prediction, glyph
from mlmlab.tokenizer import UNK
from mlmlab.tui.explorer.worker import Side
from mlmlab.tui.formatting import KIND_STYLES, bar, kind_legend
from mlmlab.vocab import MASKED, RANDOM, VISIBLE, token_glyph

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
    if prediction.subword:
        text = Text()
        for piece, p in prediction.segments():
            if p is None:
                text.append(piece)
                continue
            style = {True: RIGHT, False: WRONG, None: NEUTRAL}[p.correct]
            text.append(glyph(piece), style=f"{style} {DISAGREE}" if p.index in disagree else style)
        return text
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
    """What the model reads: [MASK]s, random tokens and [UNK]s written out (a subword model's pieces
    one after another, a leading space drawn as ␣)."""
    if prediction is not None and prediction.masked == masked and prediction.subword:
        return _subword_input_text(prediction)
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


def _subword_input_text(prediction: Prediction) -> Text:
    kinds = {p.index: p.kind for p in prediction.positions}
    start, end = prediction.window
    text = Text(f"model reads ({prediction.tokenizer}, {end - start} subwords): ", style="dim")
    if start:
        text.append("… ", style="dim")
    for n, (index, token) in enumerate(zip(range(start, end), prediction.model_input)):
        if n:
            text.append(" ")
        text.append(glyph(token) if token not in (MASK_TEXT, UNK) else token,
                    style="bold red" if token == UNK else KIND_STYLES.get(kinds.get(index, ""), ""))
    if prediction.window_slots[1] < len(prediction.masked):
        text.append(" …", style="dim")
    return text


def comparison_text(rows: list[ComparisonRow], left: str, right: str) -> Text:
    """Two runs that read the sentence in different positions (a char run and a subword run), lined up
    by characters: one line per stretch of hidden characters."""
    differ = sum(not r.agree for r in rows)
    text = Text(f"side by side by characters · they disagree at {differ} of {len(rows)} hidden stretches", style="bold")
    for r in rows:
        text.append(f"\nchars {r.span[0]}-{r.span[1] - 1} ", style="dim")
        text.append(glyph(r.text), style="bold")
        text.append(f"  {left}: ", style="dim")
        text.append(glyph(r.left_fill), style=RIGHT if r.agree else DISAGREE)
        text.append(f"  {right}: ", style="dim")
        text.append(glyph(r.right_fill), style=RIGHT if r.agree else DISAGREE)
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
    """One hidden position: its answer, what the model saw, and the top candidates as bars.
    A subword position also says which characters it covers."""
    text = Text(f"pos {p.index}", style=DISAGREE if disagrees else "bold")
    if p.span is not None:
        text.append(f" (chars {p.slots.start}-{p.slots.stop - 1})", style="dim")
    text.append("  answer ")
    text.append(glyph(p.answer) if p.answer is not None else "unknown", style="bold" if p.answer is not None else "dim")
    text.append("  saw ")
    text.append(p.shown if p.span is None or p.shown in (MASK_TEXT, UNK) else glyph(p.shown), style=KIND_STYLES.get(p.kind, ""))
    if p.answer_rank is not None:
        text.append(f"  rank {p.answer_rank} · p {p.answer_probability:.3f}", style=RIGHT if p.answer_rank == 1 else "")
    if p.fill_pass is not None:
        text.append(f"  filled in pass {p.fill_pass}", style="dim")
    for c in p.top:
        text.append("\n  ")
        mark = p.answer is not None and (c.token_id == p.answer_id if p.answer_id is not None else c.token == p.answer)
        text.append(f"{glyph(c.token):>2}", style=RIGHT if mark else "bold")
        text.append(" " + bar(c.probability, bar_width), style="green" if mark else "blue")
        text.append(f" {c.probability:6.1%}")
    return text


def heatmap_text(attention: AttentionMap, masked: MaskedText, cursor: int) -> Text:
    """Rows for the hidden positions and the cursor; a column per token the model read."""
    if attention.subword:
        return _subword_heatmap_text(attention, cursor)
    offset = attention.offset
    text = _heat_title(attention)
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


def _heat_title(attention: AttentionMap) -> Text:
    layer = "avg of all layers" if attention.layer is None else f"layer {attention.layer + 1}/{attention.n_layers}"
    head = "avg of all heads" if attention.head is None else f"head {attention.head + 1}/{attention.n_heads}"
    return Text(f"attention · {layer} (l) · {head} (h) · each row: where that position looked, darkest = most\n\n", style="bold")


LABEL_CELLS = 12  # a subword row label's most cells: "  12 ␣quick" and no wider


def _subword_heatmap_text(attention: AttentionMap, cursor: int) -> Text:
    """Subword labels are wider than a cell: the columns are numbered (a ruler of the last digit) and
    listed with their pieces once, and each row is labelled with its piece."""
    offset, n = attention.offset, len(attention.tokens)
    text = _heat_title(attention)
    text.append("columns: ", style="dim")
    text.append("  ".join(f"{offset + j} {glyph(t)}" for j, t in enumerate(attention.tokens)))
    text.append("\n\n")
    text.append(" " * LABEL_CELLS)
    text.append("".join(str((offset + j) % 10) for j in range(n)) + "\n", style="dim")
    at_cursor = attention.index_of_slot(cursor)
    rows = sorted({offset + j for j, kind in enumerate(attention.kinds) if kind != VISIBLE} | ({at_cursor} if at_cursor is not None else set()))
    for index in rows:
        local = index - offset
        label = f"{index:>4} {glyph(attention.tokens[local])}"
        label = label if cell_len(label) < LABEL_CELLS else label[: LABEL_CELLS - 2] + "…"
        style = "reverse" if index == at_cursor else KIND_STYLES.get(attention.kinds[local], "")
        text.append(label, style=style)
        text.append(" " * max(1, LABEL_CELLS - cell_len(label)))
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
    text.append("  " + "  ".join(f"{glyph(attention.tokens[j])}@{j + attention.offset} {weights[j]:.2f}" for j in best),
                style="dim")
    return text
