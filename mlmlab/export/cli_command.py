"""The `mlmlab export` subcommand: argument parsing only; the work is `writer.export_run`'s.

Imported when the CLI builds its parser, so it imports neither torch nor the writer at the top.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mlmlab.paths import default_db_path


def add_export_command(sub: argparse._SubParsersAction) -> None:
    export = sub.add_parser(
        "export", help="write a checkpoint as a folder Hugging Face transformers loads",
        description="Write RUN's latest checkpoint (or RUN@STEP's) to DIR: config.json, model.safetensors, "
                    "modeling_mlmlab.py, the tokenizer files and a README.md model card. Load it with "
                    "transformers' AutoModelForMaskedLM.from_pretrained(DIR, trust_remote_code=True) or "
                    "pipeline('fill-mask', model=DIR, trust_remote_code=True). Writing needs safetensors "
                    '(pip install "mlmlab[hf]"); loading needs transformers.')
    export.add_argument("run", metavar="RUN[@STEP]", help="run id or name, and optionally @STEP for that checkpoint")
    export.add_argument("dir", type=Path, metavar="DIR", help="the folder to write (new or empty)")
    export.add_argument("--force", action="store_true", help="replace DIR if it already holds files")
    export.add_argument("--json", action="store_true", help="print one JSON object instead of a line")
    export.add_argument("--db", type=Path, default=argparse.SUPPRESS,
                        help="database file (default: $MLMLAB_DB or runs/mlmlab.db)")
    export.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from mlmlab.export import require_safetensors

    require_safetensors()  # before torch loads: a missing extra is one line, at once
    from mlmlab.export.writer import export_run

    result = export_run(getattr(args, "db", None) or default_db_path(), args.run, args.dir, force=args.force)
    if args.json:
        print(json.dumps({"dir": str(result.out_dir), "run": {"id": result.run_id, "name": result.run_name},
                          "step": result.step, "files": list(result.files), "bytes": result.bytes,
                          "seconds": round(result.seconds, 3)}, indent=2))
    else:
        print(f"exported run {result.run_id} {result.run_name} @ step {result.step} to {result.out_dir} "
              f"({len(result.files)} files, {result.bytes / 1e6:.2f} MB)")
    return 0
