"""The import rules: the engine never imports the UI; the app does not import torch at start."""

import subprocess
import sys

from conftest import REPO


def test_import_contracts():
    result = subprocess.run(["lint-imports"], capture_output=True, text=True, cwd=REPO)
    if result.returncode != 0 and "not found" in (result.stderr + result.stdout).lower():  # pragma: no cover
        raise AssertionError("lint-imports is missing: install the dev extra")
    assert result.returncode == 0, result.stdout + result.stderr


def test_engine_modules_do_not_load_textual():
    code = ("import sys, mlmlab.config, mlmlab.store, mlmlab.masking, mlmlab.model, mlmlab.engine.trainer, mlmlab.data, "
            "mlmlab.tokenizer, mlmlab.launcher; bad = [m for m in sys.modules if m.startswith('textual')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr


def test_config_and_store_do_not_load_torch():
    code = ("import sys, mlmlab.config, mlmlab.store, mlmlab.cli; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr


def test_shared_words_prediction_results_and_messages_do_not_load_torch():
    """The app, the store and the explorer's screen all read these; none may bring torch with it."""
    code = ("import sys, mlmlab.vocab, mlmlab.predict.results, mlmlab.tui.messages; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
