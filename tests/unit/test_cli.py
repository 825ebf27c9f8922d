"""The command line: help lists documented fields; config errors name the key; data errors the line."""

import json
import subprocess
import sys


from rlhfkit.cli import main


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "rlhfkit.cli", *args], capture_output=True, text=True, timeout=120)


def test_stage_help_shows_documented_fields():
    result = run_cli("sft", "--help")
    assert result.returncode == 0
    assert "max_length" in result.stdout and "optim.learning_rate" in result.stdout
    assert "peak learning rate of AdamW" in result.stdout


def test_top_level_help_lists_stages():
    result = run_cli("--help")
    assert result.returncode == 0
    for stage in ("pretrain", "sft", "demo", "reward"):
        assert stage in result.stdout


def test_unknown_key_is_named(capsys):
    assert main(["sft", "model=m", "data=d", "learning_rate=1"]) == 2
    assert "unknown config key 'learning_rate'" in capsys.readouterr().err


def test_wrong_type_is_named(capsys):
    assert main(["sft", "model=m", "data=d", "batch_size=many"]) == 2
    assert "batch_size: expected an integer" in capsys.readouterr().err


def test_bad_data_gives_file_line_field_not_a_traceback(tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "sft.jsonl"
    data.write_text(json.dumps({"prompt": "p", "completion": "c"}) + "\n" + json.dumps({"prompt": "p"}) + "\n")
    code = main(["sft", f"model={tiny_model_dir}", f"data={data}", "--output-dir", str(tmp_path / "out"),
                 "max_steps=1", "progress=false"])
    err = capsys.readouterr().err
    assert code == 1
    assert f"{data}:2: field 'completion': is missing" in err


def test_config_file_and_overrides(tiny_model_dir, tmp_path):
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"prompt": "User: hi\nAssistant:", "completion": " hello."}) + "\n"
                            for _ in range(8)))
    cfg = tmp_path / "sft.yaml"
    cfg.write_text(f"model: {tiny_model_dir}\ndata: {data}\nmax_steps: 2\nbatch_size: 4\nprogress: false\n")
    out = tmp_path / "run"
    assert main(["sft", "--config", str(cfg), "--output-dir", str(out), "optim.learning_rate=0.001"]) == 0
    saved = (out / "config.yaml").read_text()
    assert "learning_rate: 0.001" in saved and "max_steps: 2" in saved
    assert (out / "final" / "config.json").exists()
    assert len((out / "metrics.jsonl").read_text().splitlines()) >= 2


def test_every_stage_names_a_module_config_and_run_that_exist():
    # the CLI lists an optional stage only when its module is found: a mistyped module would vanish silently
    import importlib

    from rlhfkit.cli import OPTIONAL_STAGES, STAGES

    for name, stage in {**STAGES, **OPTIONAL_STAGES}.items():
        module = importlib.import_module(stage.module)
        assert callable(getattr(module, stage.run)) and hasattr(module, stage.config), name
