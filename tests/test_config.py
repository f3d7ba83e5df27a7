"""Config loading details the CLI relies on."""

import pytest

from gpt3_jax.config import load_config
from gpt3_jax.errors import UserError


def test_single_value_for_a_list_key_is_a_one_item_list():
    cfg = load_config("configs/shakespeare-char.yaml", ["data.input=../shared/data/tinyshakespeare.txt"])
    assert cfg.data.input == ("../shared/data/tinyshakespeare.txt",)
    cfg = load_config(None, ["data.input=[a.txt, b.txt]", "model.attention_pattern=dense"])
    assert cfg.data.input == ("a.txt", "b.txt")
    assert cfg.model.attention_pattern == ("dense",)


def test_override_that_is_not_yaml_is_one_line_error():
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(None, ["data.input=[a.txt"])


def test_overrides_win_over_the_file():
    cfg = load_config("configs/tiny.yaml", ["train.steps=7", "model.remat=full"])
    assert (cfg.train.steps, cfg.model.remat, cfg.model.n_layer) == (7, "full", 4)


def test_cli_takes_overrides_after_options(capsys):
    import json

    from gpt3_jax.cli import main

    assert main(["info", "configs/tiny.yaml", "--json", "model.n_layer=8"]) == 0
    assert json.loads(capsys.readouterr().out)["layers"] == 8
