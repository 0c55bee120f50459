"""The `mlmlab` command: a thin layer of argument parsing over the engine and the app.

User errors (`MlmlabError`) print one line and exit with status 2; anything else is a bug and
keeps its traceback. Heavy modules (torch, textual) are imported only by the commands that need them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mlmlab.errors import MlmlabError
from mlmlab.export.cli_command import add_export_command
from mlmlab.paths import default_db_path, require_db_folder
from mlmlab.tokenizer import TOKENIZER_KINDS

EXIT_USER_ERROR = 2
DEVICE_HELP = "auto, cpu, cuda, cuda:N or mps (overrides train.device)"
TABLE_WIDTH = 100_000  # wider than any table: rows stay one line each, as wide as their cells


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except MlmlabError as exc:
        print(f"mlmlab: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("mlmlab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `mlmlab runs | head`
        return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlmlab", description="A terminal workbench for masked language models.")
    add_db(parser)
    parser.set_defaults(func=cmd_app)
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    add_training_commands(sub)

    runs = sub.add_parser("runs", help="list runs")
    runs.add_argument("--json", action="store_true", help="print a JSON list, one object per run")
    add_db(runs)
    runs.set_defaults(func=cmd_runs)

    stop = sub.add_parser("stop", help="ask a training run to checkpoint and stop")
    stop.add_argument("run", help="run id or name")
    add_db(stop)
    stop.set_defaults(func=cmd_stop)
    add_predict_command(sub)
    add_data_command(sub)
    add_export_command(sub)

    app = sub.add_parser("app", help="open the terminal app (the default with no command)")
    add_db(app)
    app.set_defaults(func=cmd_app)
    return parser


def add_training_commands(sub: argparse._SubParsersAction) -> None:
    """`run` and `bench`: both train the model a config describes."""
    run = sub.add_parser("run", help="train a model (headless); the app launches exactly this")
    add_config_args(run, "train.steps=2000")
    run.add_argument("--name", help="run name (default: the preset's name)")
    run.add_argument("--device", help=DEVICE_HELP)
    run.add_argument("--resume", metavar="RUN", help="continue run RUN (id or name) from its last checkpoint")
    run.add_argument("--quiet", action="store_true", help="no progress output")
    run.add_argument("--id-file", type=Path, metavar="PATH",
                     help="write the run's id to PATH once its row exists (for programs that launch runs)")
    add_db(run)
    run.set_defaults(func=cmd_run)

    bench = sub.add_parser("bench", help="time real training steps: tokens/s, ms/step, memory, MFU (no database)")
    add_config_args(bench, "model.d_model=256")
    bench.add_argument("--steps", type=_positive_int, default=30, metavar="N", help="timed steps (default 30)")
    bench.add_argument("--warmup", type=_non_negative_int, default=5, metavar="N",
                       help="untimed warm-up steps first, compilation included (default 5)")
    bench.add_argument("--device", help=DEVICE_HELP)
    bench.add_argument("--no-peak", dest="peak", action="store_false",
                       help="skip measuring the matmul peak (and so MFU)")
    bench.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    bench.set_defaults(func=cmd_bench)


def add_config_args(parser: argparse.ArgumentParser, example: str) -> None:
    """A preset and --set overrides of it, as `run` and `bench` take them."""
    parser.add_argument("config", nargs="?", help="a TOML preset path or name in experiments/ (default: quick)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a config key, e.g. --set {example} (repeatable)")


def add_predict_command(sub: argparse._SubParsersAction) -> None:
    predict = sub.add_parser("predict", help="ask a checkpoint (or a local HF masked LM) what belongs at hidden positions",
                             description="Braces hide the enclosed text and keep it as the answer ('The {quick} fox'); "
                                         "[MASK] hides one position with no answer; \\{ \\} \\[ \\\\ are literal characters. "
                                         "RUN may also be a local Hugging Face model directory (save_pretrained; needs mlmlab[hf]).")
    predict.add_argument("run", metavar="RUN", help="run id or name, or a local model directory (a path holding config.json)")
    predict.add_argument("text", help="the sentence, e.g. 'The {quick} brown fox' or 'To be or [MASK] to be'")
    predict.add_argument("--top-k", type=int, default=5, metavar="K", help="candidates per position (default 5)")
    predict.add_argument("--checkpoint", type=int, metavar="STEP", help="the checkpoint at this step (default: the latest)")
    predict.add_argument("--iterative", action="store_true",
                         help="fill one position per pass, most confident first, re-predicting after each fill")
    predict.add_argument("--compare", metavar="[RUN][@STEP]|PATH",
                         help="predict the same sentence with a second checkpoint and mark where they disagree: "
                              "@STEP (this run at STEP), RUN (its latest), RUN@STEP, or PATH (a local model directory)")
    predict.add_argument("--json", action="store_true", help="print one JSON object for scripts")
    add_db(predict)
    predict.set_defaults(func=cmd_predict)


def add_data_command(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="tokenise a corpus into the token cache ahead of a run (no database)")
    data.add_argument("source", help="'builtin', a UTF-8 text file, or a folder of .txt/.md files (as data.source)")
    data.add_argument("--tokenizer", default="char", choices=TOKENIZER_KINDS, help="tokenizer kind (as data.tokenizer)")
    data.add_argument("--vocab-size", type=_non_negative_int, default=0, metavar="N",
                      help="subword vocabulary size, as data.vocab_size (default 0: 8000 for subword kinds)")
    data.add_argument("--max-chars", type=_non_negative_int, default=0, metavar="N", help="as data.max_chars (default 0: all)")
    data.add_argument("--valid-fraction", type=float, default=0.05, metavar="F",
                      help="as data.valid_fraction: the vocabulary is built from the training side (default 0.05)")
    data.add_argument("--json", action="store_true", help="print one JSON object instead of the figures")
    data.set_defaults(func=cmd_data)


def cmd_data(args: argparse.Namespace) -> int:
    from mlmlab.config import load_config
    from mlmlab.data_prep import format_figures, prepare_ahead

    cfg = load_config(None, [f"data.source={args.source}", f"data.tokenizer={args.tokenizer}",  # the run's checks
                             f"data.vocab_size={args.vocab_size}",
                             f"data.max_chars={args.max_chars}", f"data.valid_fraction={args.valid_fraction}"])
    fig = prepare_ahead(cfg)
    print(json.dumps(fig, indent=2) if args.json else format_figures(fig))
    return 0


def add_db(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", type=Path, default=argparse.SUPPRESS,
                        help="database file (default: $MLMLAB_DB or runs/mlmlab.db)")


def db_path(args: argparse.Namespace) -> Path:
    return getattr(args, "db", None) or default_db_path()


def cmd_run(args: argparse.Namespace) -> int:
    from mlmlab.launcher import new_run, resume_run
    from mlmlab.progress import pick_reporter
    from mlmlab.engine.trainer import NonFiniteLoss

    reporter = pick_reporter(args.quiet)
    try:
        if args.resume:
            if args.config or args.name:
                raise MlmlabError("--resume takes no CONFIG or --name: the run keeps its own (use --set train.steps=N to extend it)")
            run_id, status = resume_run(db_path(args), args.resume, args.sets, device=args.device, reporter=reporter,
                                        id_file=args.id_file)
        else:
            run_id, status = new_run(db_path(args), args.config, args.sets, name=args.name, device=args.device, reporter=reporter,
                                     id_file=args.id_file)
    except NonFiniteLoss as exc:
        print(f"mlmlab: run failed: {exc}", file=sys.stderr)
        return 1
    if run_id is not None and not args.quiet:
        print(f"run {run_id} {status} (database {db_path(args)})", file=sys.stderr)
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def cmd_bench(args: argparse.Namespace) -> int:
    from mlmlab.bench import format_report, run_bench
    from mlmlab.config import load_config
    from mlmlab.devices import resolve_device, resolve_precision

    cfg = load_config(args.config, args.sets)
    if args.device:
        cfg = cfg.with_overrides({"train.device": args.device})
    device = resolve_device(cfg.train.device)
    precision = resolve_precision(cfg.train.precision, device)
    result = run_bench(cfg, device, precision, steps=args.steps, warmup=args.warmup, measure_peak=args.peak)
    print(json.dumps(result, indent=2) if args.json else format_report(result))
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from mlmlab.store import Store

    path = db_path(args)
    if not path.exists():
        require_db_folder(path)  # no file in a folder that is there: no runs yet; no folder: a typo
        rows = []
    else:
        with Store(path, readonly=True) as store:
            rows = store.summaries()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no runs yet in {path}: start one with `mlmlab run`")
        return 0
    print(format_runs_table(rows))
    return 0


def format_runs_table(rows: list[dict]) -> str:
    def fmt(value, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    header = ("id", "name", "status", "step", "progress", "train loss", "eval loss", "eval acc", "tok/s", "device",
              "procs", "started")
    return format_table(header, [(
        str(r["id"]), r["name"][:24], r["status"], f"{r['steps']}/{r['total_steps']}", progress_words(r),
        fmt(r["train_loss"], ".3f"), fmt(r["eval_loss"], ".3f"), fmt(r["eval_acc"], ".1%"),
        fmt(r["tokens_per_s"], ",.0f"), r["device"] or "-", str(r.get("world_size") or 1), r["started"] or "-",
    ) for r in rows])


def progress_words(row: dict) -> str:
    """`complete: 5m budget` / `complete: steps` for a completed run, else how far it is through its binding budget."""
    from mlmlab.budget import STEPS, minutes_text, run_budget

    budget = run_budget(row["status"], row["steps"], row["total_steps"], row["duration_s"] or 0.0, row["max_minutes"])
    if budget.complete:
        return f"complete: {budget.reason}"
    of = "steps" if budget.binding == STEPS else minutes_text(budget.max_minutes)
    return f"{budget.fraction:.0%} of {of}"


def format_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """Left-aligned columns two spaces apart under a header, no borders, never wrapped (scripts cut
    columns by position); the header is bold on a terminal. Cells are plain text, never markup."""
    import io

    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, show_edge=False, pad_edge=False, padding=(0, 1), header_style="bold")
    for title in header:
        table.add_column(Text(title), no_wrap=True)
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    buffer, styled = io.StringIO(), sys.stdout.isatty()
    Console(file=buffer, width=TABLE_WIDTH, force_terminal=styled, color_system="auto" if styled else None,
            highlight=False).print(table)
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines())


def cmd_stop(args: argparse.Namespace) -> int:
    from mlmlab.ops import stop_run

    outcome = stop_run(db_path(args), args.run)
    run_id = outcome.run["id"]
    if not outcome.asked:
        raise MlmlabError(f"run {run_id} is {outcome.status}, not running", run_id=run_id)
    print(f"asked run {run_id} to stop; it checkpoints first")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from mlmlab.notation import parse
    from mlmlab.predict.loading import PredictorCache, load_predictor, use_prediction_threads
    from mlmlab.predict.results import compare_rows, disagreement_sides, same_positions
    from mlmlab.vocab import FILL_ALL, FILL_ITERATIVE

    if args.top_k < 1:
        raise MlmlabError(f"--top-k must be at least 1, not {args.top_k}")
    masked = parse(args.text)  # before loading anything: a typo should not wait for torch
    other = parse_compare(args.compare, args.run) if args.compare is not None else None
    use_prediction_threads()
    mode = FILL_ITERATIVE if args.iterative else FILL_ALL
    cache = PredictorCache(size=2)
    ref, predictor = load_predictor(db_path(args), args.run, args.checkpoint, cache)
    result = predictor.predict(masked, args.top_k, mode)
    answer = {**ref.to_json(), **result.to_json()}
    if other is not None:
        other_ref, other_predictor = load_predictor(db_path(args), *other, cache)
        other_result = other_predictor.predict(masked, args.top_k, mode)
        disagree, disagree_other = disagreement_sides(result, other_result)
        aligned = same_positions(result, other_result)  # else each read it its own way: rows by characters
        rows = [] if aligned else compare_rows(result, other_result)
        answer["compare"] = {**other_ref.to_json(), **other_result.to_json()}
        answer["disagree"] = disagree
        if not aligned:
            answer["compare"]["disagree"] = disagree_other
            answer["rows"] = [{"span": list(r.span), "text": r.text, "fill": r.left_fill, "compare_fill": r.right_fill,
                               "agree": r.agree, "positions": [p.index for p in r.left],
                               "compare_positions": [p.index for p in r.right]} for r in rows]
    if args.json:
        print(json.dumps(answer, indent=2, ensure_ascii=False))
        return 0
    print(format_prediction(ref.label, result))
    if other is not None:
        print("\n" + format_prediction(other_ref.label, other_result))
        if aligned:
            where = ", ".join(str(i) for i in disagree) or "nowhere"
            print(f"\nthey disagree at {len(disagree)} of {len(result.positions)} hidden positions: {where}")
        else:
            print("\n" + format_rows(ref.label, other_ref.label, rows))
    return 0


def parse_compare(spec: str, run: str) -> tuple[str, int | None]:
    """`--compare`: '@STEP' (the same run), 'RUN' (its latest checkpoint), 'RUN@STEP' or a model directory."""
    from mlmlab.predict.hf_dir import model_dir_of

    if model_dir_of(spec) is not None:  # before the '@' split: a path may hold one
        return spec, None
    name, at, step = spec.rpartition("@") if "@" in spec else (spec, "", "")
    if at and not step.isdigit():
        raise MlmlabError(f"--compare {spec!r}: expected @STEP, RUN or RUN@STEP, with STEP a number")
    if not (name or at):
        raise MlmlabError("--compare needs @STEP, RUN or RUN@STEP")
    return (name or run), (int(step) if at else None)


def format_prediction(label: str, result) -> str:
    """Plain text for `mlmlab predict`: the filled sentence, then one row per hidden position (a
    subword model's rows are its hidden pieces, each with the characters it covers)."""
    from mlmlab.predict.results import glyph
    from mlmlab.vocab import FILL_ITERATIVE

    lines = [f"{label} · fill {'one at a time, most confident first' if result.mode == FILL_ITERATIVE else 'all at once'}"]
    lines += [f"note: {note}" for note in result.notes]
    lines += [f"input   {result.masked.notation()}"]
    if result.subword:
        lines += [f"reads   {' '.join(glyph(t) for t in result.model_input)}  ({result.tokenizer} subwords)"]
    lines += [f"filled  {result.filled}", ""]
    iterative = result.mode == FILL_ITERATIVE
    chars = ("chars",) if result.subword else ()
    header = ("pos", *chars, "answer", "guess", "", "answer rank (p)", *(["pass"] if iterative else []), "top candidates")
    rows = []
    for p in result.positions:
        mark = {True: "right", False: "wrong", None: ""}[p.correct]
        rank = f"{p.answer_rank} ({p.answer_probability:.3f})" if p.answer_rank else "-"
        top = "  ".join(f"{glyph(c.token)} {c.probability:.3f}" for c in p.top)
        span = (f"{p.slots.start}-{p.slots.stop - 1}",) if result.subword else ()
        rows.append((str(p.index), *span, glyph(p.answer) if p.answer is not None else "?", glyph(p.choice), mark, rank,
                     *([str(p.fill_pass)] if iterative else []), top))
    lines.append(format_table(header, rows))
    if result.n_known:
        loss = f"loss {result.loss:.3f} over {len(result.answered)} answered positions; " if result.loss is not None else ""
        lines += ["", f"{loss}{result.n_correct} of {result.n_known} right"]
    return "\n".join(lines)


def format_rows(label: str, other_label: str, rows) -> str:
    """Two predictions tokenised differently, side by side: one row per stretch of hidden characters."""
    from mlmlab.predict.results import glyph

    header = ("chars", "text", label, other_label, "")
    table = [(f"{r.span[0]}-{r.span[1] - 1}", glyph(r.text), glyph(r.left_fill), glyph(r.right_fill), "agree" if r.agree else "differ")
             for r in rows]
    differ = sum(not r.agree for r in rows)
    return "\n".join(["side by side, aligned by characters:", format_table(header, table), "",
                      f"they disagree at {differ} of {len(rows)} hidden stretches"])


def cmd_app(args: argparse.Namespace) -> int:
    require_db_folder(db_path(args))  # before the UI starts: a missing folder is one line and exit 2
    from mlmlab.tui.app import run_app

    return run_app(db_path(args))


if __name__ == "__main__":
    sys.exit(main())
