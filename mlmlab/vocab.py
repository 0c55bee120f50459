"""The names every part of mlmlab shares, spelled once: run statuses, mask kinds, fill modes and
how a token is drawn.

Plain Python with no imports of torch or the UI, so the store, the engine, prediction and the app
can all read the same words (and the app can start without torch).
"""

from __future__ import annotations

from mlmlab.tokenizer import MASK, PAD, UNK  # the tokenizer is plain Python too

# --- run statuses: the `runs.status` column ------------------------------------------------------
QUEUED, RUNNING, COMPLETED, FAILED, STOPPED, CRASHED = "queued", "running", "completed", "failed", "stopped", "crashed"
STATUSES = (QUEUED, RUNNING, COMPLETED, FAILED, STOPPED, CRASHED)
ACTIVE = (QUEUED, RUNNING)  # a run in one of these has (or should have) a live process

# --- mask kinds: how a position is hidden ---------------------------------------------------------
# Codes live in masking's uint8 `kinds` tensor; names in the notation and the samples' `tokens` column.
KIND_NONE, KIND_MASK, KIND_RANDOM, KIND_KEEP = 0, 1, 2, 3
VISIBLE, MASKED, RANDOM, KEEP = "none", "mask", "random", "keep"
KIND_NAMES = {KIND_NONE: VISIBLE, KIND_MASK: MASKED, KIND_RANDOM: RANDOM, KIND_KEEP: KEEP}
KIND_LABELS = {MASKED: "[MASK]", RANDOM: "random token", KEEP: "unchanged"}  # for legends

# --- fill modes: how a prediction fills several hidden positions ----------------------------------
FILL_ALL, FILL_ITERATIVE = "all", "iterative"  # all at once, or one at a time, most confident first
FILL_MODES = (FILL_ALL, FILL_ITERATIVE)

# --- masking strategies: what `mask.strategy` chooses as a unit -----------------------------------
MASK_STRATEGIES = ("token", "whole_word", "span")

# --- token display: one printable cell per token ------------------------------------------------
# Whitespace would be invisible and a special token five cells wide where one character belongs.
# [UNK] is U+FFFD, the replacement character, so it is not read as a literal "?" in the text.
TOKEN_GLYPHS = {" ": "␣", "\n": "⏎", "\t": "⇥", MASK: "▒", PAD: "·", UNK: "�"}


def token_glyph(token: str, *, space: bool = True) -> str:
    """A token as one printable cell: whitespace made visible, special tokens abbreviated.

    A subword piece keeps its letters and its leading space (the start of a word); only newlines and
    tabs inside it become glyphs, so a sample stays one line.
    `space=False` leaves a plain space blank: between visible words a mark on every gap is noise,
    while at a hidden or predicted position a space must be seen, not missed.
    """
    if token == " " and not space:
        return token
    if len(token) > 1 and token not in TOKEN_GLYPHS:  # a subword piece: keep it on one line
        return token.replace("\n", TOKEN_GLYPHS["\n"]).replace("\t", TOKEN_GLYPHS["\t"])
    return TOKEN_GLYPHS.get(token, token)
