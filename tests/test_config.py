"""Config loading details the CLI relies on."""

import pytest

from gpt3_jax.config import load_config
from gpt3_jax.errors import UserError


def test_single_value_for_a_list_key_is_a_one_item_list():
    cfg = load_config("configs/shakespeare-char.yaml", ["data.input=plays/hamlet.txt"])
    assert cfg.data.input == ("plays/hamlet.txt",)
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


def test_mesh_sizes_resolve_with_slices_and_a_free_axis():
    from gpt3_jax.config import MeshConfig
    from gpt3_jax.sharding import mesh_shape

    assert mesh_shape(MeshConfig(data=1, fsdp=-1, tensor=2), 8) == {"data": 1, "fsdp": 4, "tensor": 2}
    # two slices of 4: data parallelism spans the slices (dcn) and the data axis inside them
    assert mesh_shape(MeshConfig(data=2, fsdp=-1, tensor=1, dcn_data=2), 16) == {
        "data": 4,
        "fsdp": 4,
        "tensor": 1,
    }
    assert mesh_shape(MeshConfig(data=-1, fsdp=2, tensor=1, dcn_data=2), 8) == {
        "data": 4,
        "fsdp": 2,
        "tensor": 1,
    }
    with pytest.raises(UserError, match="needs 16 devices but there are 8"):
        mesh_shape(MeshConfig(data=2, fsdp=4, tensor=2), 8)
    with pytest.raises(UserError, match="not a multiple of 3"):
        mesh_shape(MeshConfig(fsdp=-1, tensor=3), 8)


def test_make_mesh_with_slices_on_cpu_devices():
    import jax

    from gpt3_jax.config import MeshConfig
    from gpt3_jax.sharding import make_mesh

    mesh = make_mesh(MeshConfig(data=1, fsdp=2, tensor=2, dcn_data=2))  # 8 simulated devices
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert mesh.devices.size == len(jax.devices())
