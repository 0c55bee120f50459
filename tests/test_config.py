"""Every bad value gives one line naming the key, the value and what is allowed; no run row is left."""

import sqlite3

import pytest

from conftest import run_cli, sets_args
from mlmlab.cli import main
from mlmlab.config import load_config, parse_overrides, to_toml, build_config, parse_toml
from mlmlab.errors import ConfigError


def error_of(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.bach_size=3", "unknown config key 'train.bach_size' (did you mean 'train.batch_size'?)"),
        ("model.steps=3", "unknown config key 'model.steps' (did you mean 'train.steps'?)"),
        ("optim.lr=1", "unknown config key 'optim.lr' (did you mean 'train.lr'?)"),
        ('train.batch_size="64"', "train.batch_size = '64': Input should be a valid integer"),
        ("train.batch_size=0", "train.batch_size = 0: Input should be greater than or equal to 1"),
        ("train.batch_size=true", "train.batch_size = True: Input should be a valid integer"),
        ("mask.masking_prob=1.5", "mask.masking_prob = 1.5: Input should be less than or equal to 1"),
        ("mask.randomize_prob=-0.1", "mask.randomize_prob = -0.1: Input should be greater than or equal to 0"),
        ("mask.randomize_prob=0.95", "mask.randomize_prob + mask.no_change_prob = 1.05: must be at most 1"),
        ("model.n_heads=3", "model.n_heads = 3: must divide model.d_model = 128"),
        ("train.seq_len=512", "train.seq_len = 512: must be at most model.max_seq_len = 128"),
        ("data.source=/no/such/corpus.txt", "data.source = '/no/such/corpus.txt': no such file or folder"),
        ("train.precision=fp16", "train.precision = 'fp16': must be one of: 'auto', 'fp32' or 'bf16'"),
        ("train.optimizer=sgd", "train.optimizer = 'sgd': must be one of: 'adamw' or 'adam'"),
        ("trainsteps=3", "unknown config key 'trainsteps'"),
    ],
)
def test_bad_override_one_line(capsys, db_path, override, expected):
    err = error_of(capsys, "run", "--db", str(db_path), "--set", override)
    assert expected in err
    assert not db_path.exists()  # nothing was created


def test_bad_set_syntax(capsys, db_path):
    assert "expected key=value" in error_of(capsys, "run", "--db", str(db_path), "--set", "train.steps")


def test_missing_device(capsys, db_path):
    err = error_of(capsys, "run", "--db", str(db_path), "--device", "cuda:7")
    assert "device 'cuda:7' is not available on this machine" in err


def test_bad_toml_file(capsys, tmp_path, db_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nsteps = = 3\n")
    assert "invalid TOML" in error_of(capsys, "run", str(bad), "--db", str(db_path))
    bad.write_text("[training]\nsteps = 3\n")
    assert "unknown config key 'training.steps' (did you mean 'train.steps'?)" in error_of(capsys, "run", str(bad), "--db", str(db_path))
    bad.write_bytes(b"\xff\xfe[train]")
    assert "not UTF-8" in error_of(capsys, "run", str(bad), "--db", str(db_path))


def test_empty_and_binary_corpus(capsys, tmp_path, db_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n")
    assert "the corpus is empty" in error_of(capsys, "run", "--db", str(db_path), "--set", f"data.source={empty}")
    binary = tmp_path / "blob.bin"
    binary.write_bytes(b"\x00\x01\x02" * 100)
    assert "looks binary" in error_of(capsys, "run", "--db", str(db_path), "--set", f"data.source={binary}")
    latin = tmp_path / "latin.txt"
    latin.write_bytes("café ".encode("latin-1") * 100)
    assert "not UTF-8 text" in error_of(capsys, "run", "--db", str(db_path), "--set", f"data.source={latin}")
    folder = tmp_path / "nothing"
    folder.mkdir()
    assert "holds no .txt or .md files" in error_of(capsys, "run", "--db", str(db_path), "--set", f"data.source={folder}")
    assert not db_path.exists()


def test_corpus_too_short(capsys, tmp_path, db_path):
    short = tmp_path / "short.txt"
    short.write_text("tiny text")
    assert "too short" in error_of(capsys, "run", "--db", str(db_path), "--set", f"data.source={short}")


@pytest.mark.slow
def test_cli_subprocess_gives_one_line_no_traceback_no_row(db_path, tiny_sets):
    # A database that already exists keeps its runs and gains no row from a rejected run.
    ok = run_cli("run", "--db", str(db_path), "--quiet", *sets_args(tiny_sets + ["train.steps=5"]))
    assert ok.returncode == 0, ok.stderr
    bad = run_cli("run", "--db", str(db_path), *sets_args(tiny_sets + ["model.d_model=30"]))
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == ["mlmlab: error: model.n_heads = 2: head size d_model/n_heads = 15 must be even"]
    count = sqlite3.connect(db_path).execute("select count(*) from runs").fetchone()[0]
    assert count == 1


def test_overrides_parse_toml_values_and_strings():
    assert parse_overrides(["train.lr=1e-3", "data.source=some/file.txt", "mask.no_mask_tokens=[' ']"]) == {
        "train.lr": 1e-3, "data.source": "some/file.txt", "mask.no_mask_tokens": [" "],
    }


def test_presets_load_and_seed_matches_reference():
    seed = load_config("seed")
    assert (seed.model.d_model, seed.model.n_layers, seed.model.n_heads, seed.model.d_ff) == (128, 6, 8, 256)
    assert (seed.train.seq_len, seed.train.batch_size, seed.train.schedule) == (32, 64, "noam")
    assert (seed.mask.masking_prob, seed.mask.randomize_prob, seed.mask.no_change_prob) == (0.15, 0.1, 0.1)
    assert load_config() == load_config("quick")
    load_config("base-gpu")


def test_config_round_trips_through_toml():
    cfg = load_config("seed", ["mask.no_mask_tokens=['\"', '\\n']"])
    assert build_config(parse_toml(to_toml(cfg))) == cfg


def test_toml_output_stays_valid_for_any_string(tmp_path):
    # Carriage returns, other control characters, quotes and backslashes: each must come back as written.
    tokens = ["\r", "\x00", "\x1b", "\u2028", '"', "\\", "'''", "caf\u00e9"]
    cfg = build_config({"mask": {"no_mask_tokens": tokens}, "data": {"source": str(tmp_path)}})
    text = to_toml(cfg)
    assert build_config(parse_toml(text)) == cfg
    assert text.startswith("[data]\n") and "\n[train]\n" in text  # one table per section, as presets are written


def test_config_errors_carry_the_key_and_value():
    with pytest.raises(ConfigError) as bad_range:
        load_config(None, ["train.steps=0"])
    assert (bad_range.value.key, bad_range.value.value) == ("train.steps", 0)
    with pytest.raises(ConfigError) as cross:
        load_config(None, ["model.n_heads=3"])
    assert (cross.value.key, cross.value.value) == ("model.n_heads", 3)
    with pytest.raises(ConfigError) as list_entry:
        load_config(None, ["mask.no_mask_tokens=[1]"])
    assert list_entry.value.key == "mask.no_mask_tokens" and str(list_entry.value).startswith("mask.no_mask_tokens.0 = ")
    with pytest.raises(ConfigError) as unknown:
        load_config(None, ["train.stepz=3"])
    assert unknown.value.key == "train.stepz"


def test_int_accepted_for_float():
    assert load_config(None, ["train.lr=1"]).train.lr == 1.0
    with pytest.raises(ConfigError):
        load_config(None, ["train.steps=1.5"])
