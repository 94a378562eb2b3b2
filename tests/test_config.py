"""Configs: YAML + dotted overrides into typed dataclasses, and errors that name key, source and choices."""

from __future__ import annotations

import pytest
from conftest import CONFIGS, run_cli

import shared.classify  # noqa: F401  (registers algo: classify)
from shared.classify import ClassifyConfig
from shared.cli import main
from shared.config import load_config, to_yaml
from shared.errors import ConfigError

LENET = CONFIGS / "classify" / "lenet5_mnist.yaml"


def write(tmp_path, text: str):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_file_and_overrides_load_into_typed_dataclass():
    algorithm, cfg = load_config(LENET, ["optim.lr=0.01", "seed=3", "tracking.tags=[a,b]", "train.grad_clip=1"])
    assert algorithm.name == "classify" and isinstance(cfg, ClassifyConfig)
    assert cfg.optim.lr == 0.01 and isinstance(cfg.optim.lr, float)
    assert cfg.seed == 3 and cfg.tracking.tags == ["a", "b"] and cfg.train.grad_clip == 1.0
    assert (cfg.data.name, cfg.data.pad, cfg.model.name, cfg.optim.name) == ("mnist", 2, "lenet5", "adamw")
    assert cfg.train.epochs == 30 and cfg.checkpoint.keep_last == 3


def test_resolved_yaml_loads_back_to_the_same_config(tmp_path):
    _, cfg = load_config(LENET, ["optim.lr=0.01", "train.max_steps=7"])
    _, again = load_config(write(tmp_path, to_yaml(cfg)))
    assert again == cfg


def test_unknown_key_in_file_names_key_file_and_suggestion(tmp_path):
    path = write(tmp_path, "algo: classify\noptim:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    message = str(e.value)
    assert str(path) in message
    assert "unknown key 'optim.lrr'" in message
    assert "did you mean 'optim.lr'?" in message
    assert "lr, momentum, name, nesterov, weight_decay" in message


def test_unknown_top_level_override_names_the_override():
    with pytest.raises(ConfigError, match=r"override 'sed=3': unknown key 'sed' \(did you mean 'seed'\?\)"):
        load_config(LENET, ["sed=3"])


def test_value_outside_a_choice_lists_the_choices():
    with pytest.raises(ConfigError) as e:
        load_config(LENET, ["optim.name=adm"])
    assert str(e.value) == (
        "override 'optim.name=adm': optim.name='adm' is not a valid choice (did you mean 'adam'?); "
        "valid choices: sgd, adagrad, rmsprop, adam, adamw"
    )


def test_wrong_type_names_the_key():
    with pytest.raises(
        ConfigError, match=r"override 'seed=abc': seed: Value 'abc' of type 'str' could not be converted to Integer"
    ):
        load_config(LENET, ["seed=abc"])


def test_model_name_is_checked_against_the_model_registry():
    with pytest.raises(ConfigError, match=r"model.name='lenet' is not a valid choice \(did you mean 'lenet5'\?\)"):
        load_config(LENET, ["model.name=lenet"])


def test_unknown_algo_and_missing_algo(tmp_path):
    with pytest.raises(
        ConfigError,
        match=r"algo='clasify' is not a known algorithm; valid choices: .*classify.*did you mean 'classify'",
    ):
        load_config(write(tmp_path, "algo: clasify\n"))
    with pytest.raises(ConfigError, match="has no 'algo' key"):
        load_config(write(tmp_path, "seed: 1\n"))


def test_range_checks_name_the_key():
    with pytest.raises(ConfigError, match=r"train.epochs=0: must be > 0"):
        load_config(LENET, ["train.epochs=0"])


def test_malformed_override_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="override 'seed' must look like key=value"):
        load_config(LENET, ["seed"])
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(write(tmp_path, "algo: [classify\n"))
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.yaml")


def test_cli_misspelled_key_exits_2_and_creates_no_run_folder(tmp_path, capsys):
    bad = write(tmp_path, LENET.read_text().replace("  lr: 0.002", "  lrr: 0.002"))
    status = main(["train", str(bad), f"runs_dir={tmp_path / 'runs'}"])
    assert status == 2
    err = capsys.readouterr().err
    assert err.startswith(f"pixlab: error: {bad}: unknown key 'optim.lrr' (did you mean 'optim.lr'?)")
    assert not (tmp_path / "runs").exists()


def test_cli_process_exit_status_is_2(tmp_path):
    result = run_cli("train", str(LENET), "optim.name=adm", cwd=tmp_path)
    assert result.returncode == 2
    assert "valid choices: sgd, adagrad, rmsprop, adam, adamw" in result.stderr
    assert not (tmp_path / "runs").exists()
