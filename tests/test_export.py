"""`mlmlab export`: a char run and a wordpiece run exported, reloaded by `transformers` with no
network, their logits and the fill-mask pipeline's candidates checked against mlmlab's own, and
every bad input answered with one line, exit 2 and nothing half-written.

Loading needs `transformers` (the `hf` extra): those tests skip without it; writing does not.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import REPO, TINY_SETS, run_cli, sets_args
from mlmlab.checkpoints import checkpoint_files
from mlmlab.notation import parse
from mlmlab.predict.predictor import Predictor
from mlmlab.store import Store
from mlmlab.tokenizer import MASK_ID, N_SPECIAL, PAD_ID, UNK_ID

pytestmark = pytest.mark.slow  # the module trains two tiny runs (about 5 s each)

EXPECTED_FILES = {"config.json", "model.safetensors", "modeling_mlmlab.py", "tokenizer.json",
                  "tokenizer_config.json", "special_tokens_map.json", "README.md"}
CHAR_TEXT = "The cat sat on [MASK] mat.\nA dog"  # within the tiny model's 32 positions
WP_TEXT = "The cat sat on the [MASK] and the dog ran to a big house."


@pytest.fixture(scope="module")
def runs(tmp_path_factory, corpus_file):
    """A char run and a wordpiece run, 40 steps each with checkpoints at 20 and 40: the database path.
    Every test that uses it exports, which takes safetensors (the `hf` extra): they skip without it."""
    pytest.importorskip("safetensors")
    home = tmp_path_factory.mktemp("export-home")
    env = {"HOME": str(home), "MLMLAB_CACHE": str(home / "cache")}
    db = tmp_path_factory.mktemp("export-db") / "mlmlab.db"
    sets = [*TINY_SETS, f"data.source={corpus_file}"]
    for name, extra in (("char", []), ("wp", ["data.tokenizer=wordpiece", "data.vocab_size=120"])):
        result = run_cli("run", "--db", str(db), "--quiet", "--name", name, *sets_args([*sets, *extra]), env=env)
        assert result.returncode == 0, result.stderr
    return db


@pytest.fixture(scope="module")
def exported(runs, tmp_path_factory):
    """Both runs exported through the CLI: {"char": dir, "wp": dir}."""
    out = tmp_path_factory.mktemp("exported")
    dirs = {}
    for name in ("char", "wp"):
        result = run_cli("export", "--db", str(runs), name, str(out / name))
        assert result.returncode == 0, result.stderr
        assert f"to {out / name}" in result.stdout
        dirs[name] = out / name
    return dirs


@pytest.fixture
def transformers(monkeypatch):
    """transformers, offline; a prompt to run the folder's code (transformers 5's AutoTokenizer
    asks, for the config) is answered 'no' at once instead of waiting on a terminal."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tf = pytest.importorskip("transformers")
    import transformers.dynamic_module_utils as dynamic

    monkeypatch.setattr(dynamic, "TIME_OUT_REMOTE_CODE", 0)
    return tf


def latest_predictor(db, name: str) -> Predictor:
    with Store(db, readonly=True) as store:
        run = store.find_run(name)
    return Predictor.load(checkpoint_files(run["run_dir"])[-1])


def hf_model(tf, folder):
    return tf.AutoModelForMaskedLM.from_pretrained(folder, trust_remote_code=True, local_files_only=True).eval()


def real_top(candidates: list[dict], k: int) -> list[tuple[int, float]]:
    """The pipeline's candidates among real tokens: it ranks the whole vocabulary, mlmlab real tokens only."""
    return [(c["token"], c["score"]) for c in candidates if c["token"] >= N_SPECIAL][:k]


def export_cli(capsys, *args: str) -> subprocess.CompletedProcess:
    """`mlmlab export ARGS` in this process (a subprocess spends 2 s importing torch)."""
    from mlmlab.cli import main

    capsys.readouterr()
    code = main(["export", *args])
    out = capsys.readouterr()
    return subprocess.CompletedProcess(["mlmlab", "export", *args], code, out.out, out.err)


# --- the folder ---------------------------------------------------------------------------------


def test_char_export_writes_the_files_transformers_reads(runs, exported):
    folder = exported["char"]
    assert {p.name for p in folder.iterdir()} == EXPECTED_FILES
    assert not list(folder.parent.glob(".*.tmp")), "a temporary folder was left beside the export"
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "mlmlab" and config["architectures"] == ["MlmlabForMaskedLM"]
    assert config["auto_map"]["AutoModelForMaskedLM"] == "modeling_mlmlab.MlmlabForMaskedLM"
    assert config["mlmlab"] == {"run_id": 1, "run_name": "char", "step": 40, "tokenizer": "char"}
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as weights:
        keys = set(weights.keys())
        assert weights.metadata() == {"format": "pt"}
    assert "mlmlab.tok_emb.weight" in keys and "lm_head.bias" in keys
    assert "lm_head.weight" not in keys, "the tied head is stored once, as the embedding"
    tok_config = json.loads((folder / "tokenizer_config.json").read_text())
    assert tok_config["mask_token"] == "[MASK]" and tok_config["clean_up_tokenization_spaces"] is False
    assert (folder / "modeling_mlmlab.py").read_text() == (REPO / "mlmlab/export/hf/modeling_mlmlab.py").read_text()


def test_model_card_tells_the_run(runs, exported, corpus_file):
    card = (exported["char"] / "README.md").read_text()
    with Store(runs, readonly=True) as store:
        stats = store.metric_stats(1, ["eval_loss", "eval_acc", "eval_bpc"], at_step=40)
        tokens = store.checkpoints(1)[-1]["tokens"]
    assert card.startswith("---\nlibrary_name: transformers\npipeline_tag: fill-mask\n")
    assert "step 40" in card and f"{tokens:,} training tokens" in card
    assert f"{stats['eval_loss']['at']:.4f}" in card and f"{stats['eval_acc']['at']:.2%}" in card
    assert f"{stats['eval_bpc']['at']:.4f}" in card
    assert f"`{corpus_file.name}`" in card and str(corpus_file.parent) not in card, "only the corpus's name, never its path"
    assert "15% of positions chosen per window, by the `token` strategy" in card
    assert 'pipeline("fill-mask"' in card and "one character" in card


def test_export_writes_no_transformers_import_and_help_stays_light(runs, tmp_path):
    code = ("import sys; from mlmlab.cli import build_parser; build_parser().format_help(); "
            "print(sorted(m for m in ('torch', 'transformers', 'safetensors') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr
    code = ("import sys; from mlmlab.cli import main; "
            f"rc = main(['export', '--db', {str(runs)!r}, 'char', {str(tmp_path / 'out')!r}]); "
            "print(rc, 'transformers' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.stdout.splitlines()[-1] == "0 False", result.stdout + result.stderr


# --- char run: reloaded by transformers ------------------------------------------------------------


def test_char_logits_equal_mlmlabs(runs, exported, transformers):
    model = hf_model(transformers, exported["char"])
    assert model.dtype == torch.float32
    assert model.lm_head.weight.data_ptr() == model.mlmlab.tok_emb.weight.data_ptr(), "head tied to the embedding"
    ours = latest_predictor(runs, "char").model
    V, T = ours.args.vocab_size, ours.args.max_seq_len
    ids = torch.randint(N_SPECIAL, V, (3, T), generator=torch.Generator().manual_seed(0))
    ids[1, 5], ids[2, 7] = MASK_ID, UNK_ID
    with torch.no_grad():
        assert (model(input_ids=ids).logits - ours(ids)[0]).abs().max() < 1e-4
        padded = ids.clone()
        padded[1, -6:] = PAD_ID  # a padded batch: transformers' attention_mask, mlmlab's pad mask
        theirs = model(input_ids=padded, attention_mask=(padded != PAD_ID).long()).logits
        assert (theirs - ours(padded, attn_mask=ours.attention_mask(padded))[0]).abs().max() < 1e-4
        out = model(input_ids=ids, output_attentions=True, output_hidden_states=True)
        assert (out.attentions[0] - ours.attention_maps(ids)[0]).abs().max() < 1e-5
        assert len(out.hidden_states) == ours.args.n_layers + 1


def test_char_tokenizer_ids_equal_the_char_tokenizers(runs, exported, transformers):
    tok = transformers.AutoTokenizer.from_pretrained(exported["char"], local_files_only=True)  # no remote code
    chars = latest_predictor(runs, "char").tokenizer
    for text in ("The cat  sat.\nOn a mat\tZ", "\n\n  sun  \n", "big € moon é"):
        ids = tok(text)["input_ids"]
        assert ids == chars.encode(text), text  # no [CLS] / [SEP]; unseen characters are [UNK]
        if all(ch in chars.stoi for ch in text):
            assert tok.decode(ids) == text, "spaces and newlines survive the round trip"
    masked = tok("a [MASK] b")["input_ids"]
    assert masked == [chars.stoi["a"], chars.stoi[" "], MASK_ID, chars.stoi[" "], chars.stoi["b"]]
    assert (tok.mask_token_id, tok.pad_token_id, tok.unk_token_id) == (MASK_ID, PAD_ID, UNK_ID)


def test_char_pipeline_top_k_equals_mlmlab_predict(runs, exported, transformers):
    k = 5
    fill = transformers.pipeline("fill-mask", model=str(exported["char"]), trust_remote_code=True)
    candidates = fill(CHAR_TEXT, top_k=k + N_SPECIAL)
    predictor = latest_predictor(runs, "char")
    (position,) = predictor.predict(parse(CHAR_TEXT), top_k=k).positions
    theirs = real_top(candidates, k)
    assert [predictor.tokenizer.token(i) for i, _ in theirs] == [c.token for c in position.top]
    assert [p for _, p in theirs] == pytest.approx([c.probability for c in position.top], abs=1e-5)


def test_char_export_at_a_step_holds_that_checkpoint(runs, tmp_path, transformers, capsys):
    result = export_cli(capsys, "--db", str(runs), "char@20", str(tmp_path / "at20"))
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "at20" / "config.json").read_text())["mlmlab"]["step"] == 20
    with Store(runs, readonly=True) as store:
        run = store.find_run("char")
    ours = Predictor.load(checkpoint_files(run["run_dir"])[0]).model
    model = hf_model(transformers, tmp_path / "at20")
    ids = torch.randint(N_SPECIAL, ours.args.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (model(input_ids=ids).logits - ours(ids)[0]).abs().max() < 1e-4


# --- wordpiece run -------------------------------------------------------------------------------


def test_wordpiece_tokenizer_logits_and_pipeline_equal_mlmlabs(runs, exported, transformers):
    folder = exported["wp"]
    assert json.loads((folder / "config.json").read_text())["mlmlab"]["tokenizer"] == "wordpiece"
    tok = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    predictor = latest_predictor(runs, "wp")
    ours, pieces = predictor.model, predictor.tokenizer
    ids = tok(WP_TEXT)["input_ids"]
    assert ids == pieces.encode(WP_TEXT) and ids.count(MASK_ID) == 1
    model = hf_model(transformers, folder)
    batch = torch.tensor([ids])
    at = ids.index(MASK_ID)
    with torch.no_grad():
        theirs, mine = model(input_ids=batch).logits, ours(batch)[0]
    assert (theirs - mine).abs().max() < 1e-4
    fill = transformers.pipeline("fill-mask", model=str(folder), trust_remote_code=True)
    k = 5
    probs = mine[0, at].softmax(-1)
    real = probs[N_SPECIAL:].topk(k)
    expected = [(int(i) + N_SPECIAL, float(p)) for p, i in zip(real.values, real.indices)]
    got = real_top(fill(WP_TEXT, top_k=k + N_SPECIAL), k)
    assert [i for i, _ in got] == [i for i, _ in expected]
    assert [p for _, p in got] == pytest.approx([p for _, p in expected], abs=1e-5)


# --- bad input: one line, exit 2, nothing half-written ------------------------------------------


def one_line_error(result: subprocess.CompletedProcess, *words: str) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mlmlab: error: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def no_leftovers(folder) -> None:
    assert not list(folder.glob(".*.tmp")), list(folder.iterdir())


def test_a_run_with_no_checkpoint_is_refused(runs, tmp_path, capsys):
    db = tmp_path / "db" / "mlmlab.db"
    db.parent.mkdir()
    with Store(db) as store:
        store.create_run(name="empty", config={"train": {"checkpoint_every": 20}}, vocab={}, total_steps=10)
    one_line_error(export_cli(capsys, "--db", str(db), "empty", str(tmp_path / "out")), "no checkpoint yet")
    assert not (tmp_path / "out").exists()
    no_leftovers(tmp_path)


def test_a_step_with_no_checkpoint_is_refused(runs, tmp_path, capsys):
    one_line_error(export_cli(capsys, "--db", str(runs), "char@7", str(tmp_path / "out")),
                   "no checkpoint at step 7", "20, 40")
    one_line_error(export_cli(capsys, "--db", str(runs), "char@x", str(tmp_path / "out")), "RUN@STEP")
    one_line_error(export_cli(capsys, "--db", str(runs), "nosuchrun", str(tmp_path / "out")), "nosuchrun")
    assert not (tmp_path / "out").exists()
    no_leftovers(tmp_path)


def test_a_folder_with_files_is_refused_unless_forced(runs, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    one_line_error(export_cli(capsys, "--db", str(runs), "char", str(out)), "not empty", "--force")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    (tmp_path / "afile").write_text("x")
    one_line_error(export_cli(capsys, "--db", str(runs), "char", str(tmp_path / "afile")), "not a folder")
    result = export_cli(capsys, "--db", str(runs), "char", str(out), "--force")
    assert result.returncode == 0, result.stderr
    assert {p.name for p in out.iterdir()} == EXPECTED_FILES
    empty = tmp_path / "empty"
    empty.mkdir()
    assert export_cli(capsys, "--db", str(runs), "char", str(empty)).returncode == 0
    no_leftovers(tmp_path)


def test_force_never_replaces_the_folder_holding_the_database(runs, tmp_path, capsys):
    db = tmp_path / "keep" / "mlmlab.db"
    shutil.copytree(runs.parent, db.parent)
    one_line_error(export_cli(capsys, "--db", str(db), "char", str(db.parent), "--force"), "holds")
    assert db.is_file()


@pytest.mark.parametrize("damage", ["garbage", "wrong shapes"])
def test_a_broken_checkpoint_is_refused(runs, tmp_path, damage, capsys):
    db = tmp_path / "db" / "mlmlab.db"
    shutil.copytree(runs.parent, db.parent)
    broken = tmp_path / "broken.pt"
    with Store(db) as store:
        row = store.checkpoints(store.find_run("char")["id"])[-1]
        if damage == "garbage":
            broken.write_bytes(b"\x80\x04not a checkpoint" * 10)
        else:
            payload = torch.load(row["path"], weights_only=True)
            payload["model"]["tok_emb.weight"] = torch.zeros(3, 3)
            torch.save(payload, broken)
        # The copy's rows name the original files: point its latest at the damaged one instead.
        store.add_checkpoint({**{k: row[k] for k in ("run_id", "step", "bytes", "tokens", "created_at", "eval_loss", "eval_acc")},
                              "path": str(broken)})
    out = tmp_path / "out"
    out.mkdir()
    line = one_line_error(export_cli(capsys, "--db", str(db), "char", str(out), "--force"), str(broken))
    assert ("corrupt" if damage == "garbage" else "does not fit") in line
    assert out.is_dir() and not any(out.iterdir()), "the destination is left as it was"
    no_leftovers(tmp_path)


def test_a_failed_write_leaves_the_destination_as_it_was(runs, tmp_path, monkeypatch):
    import safetensors.torch

    from mlmlab.errors import MlmlabError
    from mlmlab.export.writer import export_run

    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    with pytest.raises(MlmlabError, match="No space left on device"):
        export_run(runs, "char", out, force=True)
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    no_leftovers(tmp_path)


def test_export_without_safetensors_names_the_extra(tmp_path):
    """The missing extra is named before anything else is looked at (this database does not exist)."""
    code = ("import sys; sys.modules['safetensors'] = None; from mlmlab.cli import main; "
            f"sys.exit(main(['export', '--db', {str(tmp_path / 'none.db')!r}, 'char', {str(tmp_path / 'out')!r}]))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    one_line_error(result, 'pip install "mlmlab[hf]"')
    assert not (tmp_path / "out").exists()
