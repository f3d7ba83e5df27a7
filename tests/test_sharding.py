"""Sharding on 8 simulated CPU devices: sharded loss and gradients equal the single-device run,
parameters land where the rules table says, the train state is born sharded, bad meshes fail."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from gpt3_jax import sharding
from gpt3_jax.cli import main
from gpt3_jax.config import Config, MeshConfig, load_config
from gpt3_jax.errors import UserError
from gpt3_jax.model import GPT, abstract_gpt
from gpt3_jax.training import init_state, setup
from gpt3_jax.training.step import make_loss_fn

MESHES = {
    "data8": MeshConfig(data=8, fsdp=1),
    "fsdp8": MeshConfig(fsdp=8),
    "fsdp4_tensor2": MeshConfig(fsdp=4, tensor=2),
    "data2_fsdp2_tensor2": MeshConfig(data=2, fsdp=2, tensor=2),
}


def _cfg(tiny_model_config, mesh: MeshConfig) -> Config:
    model = dataclasses.replace(tiny_model_config, n_ctx=32)  # d 64, 4 heads, vocab 384 padded
    return Config(model=model, mesh=mesh)


def _paths(tree) -> dict[str, jax.Array]:
    """'groups.blocks.0.mlp.c_fc_w' → leaf, for an NNX state of arrays."""
    flat = jax.tree_util.tree_leaves_with_path(tree, is_leaf=lambda x: isinstance(x, nnx.Variable))

    def name(k) -> str:
        return str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))))

    return {".".join(name(k) for k in path): v for path, v in flat}


def _batch(cfg: Config, b: int = 8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.integers(0, cfg.model.vocab_size, (b, cfg.model.n_ctx + 1)).astype(np.int32)
    return x[:, :-1], x[:, 1:]


@pytest.fixture(scope="module")
def reference(request):
    """Parameters, batch, loss and gradients of the single-device (unsharded) run."""
    from gpt3_jax.config import ModelConfig

    tiny = ModelConfig(
        n_layer=4, d_model=64, n_head=4, n_ctx=64, vocab_size=300, local_window=8, dtype="float32"
    )
    cfg = _cfg(tiny, MeshConfig(fsdp=1))
    graphdef, params = nnx.split(GPT(cfg.model, rngs=nnx.Rngs(0)))
    params = jax.device_put(params, jax.devices()[0])
    inputs, targets = _batch(cfg)
    loss_fn = make_loss_fn(cfg, graphdef)
    loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params, inputs, targets, None)
    return cfg, graphdef, params, (inputs, targets), loss, grads


@pytest.mark.parametrize("mesh_name", list(MESHES))
def test_sharded_loss_and_grads_equal_single_device(reference, mesh_name):
    cfg1, _, params, (inputs, targets), loss_ref, grads_ref = reference
    cfg = cfg1.replace(mesh=MESHES[mesh_name])
    mesh = sharding.make_mesh(cfg.mesh)
    rules = sharding.rules_from_config(cfg.mesh.rules)
    shardings = sharding.state_shardings(params, mesh, rules)
    sharded = jax.device_put(params, shardings)
    batch = sharding.batch_sharding(mesh, 2, rules)
    x, y = jax.device_put(inputs, batch), jax.device_put(targets, batch)
    graphdef, _ = abstract_gpt(cfg.model, rules)  # the model's constraints follow the rules
    loss_fn = make_loss_fn(cfg, graphdef)
    with jax.set_mesh(mesh):
        loss, grads = jax.jit(jax.value_and_grad(loss_fn))(sharded, x, y, None)

    np.testing.assert_allclose(float(loss), float(loss_ref), rtol=1e-5)
    ref, got = _paths(grads_ref), _paths(grads)
    assert ref.keys() == got.keys()
    for name, g_ref in ref.items():
        g_ref = np.asarray(g_ref[...])
        scale = float(np.abs(g_ref).max())
        np.testing.assert_allclose(
            np.asarray(got[name][...]), g_ref, rtol=1e-5, atol=1e-6 * scale, err_msg=name
        )
    # the parameters really were sharded as the rules say (not silently replicated)
    for name, v in _paths(sharded).items():
        assert v[...].sharding.spec == shardings_spec(shardings, name), name


def shardings_spec(shardings, name: str) -> P:
    return _paths(shardings)[name].spec


def _state(mesh_cfg: MeshConfig, tiny_model_config):
    cfg = _cfg(tiny_model_config, mesh_cfg)
    s = setup(cfg)
    with jax.set_mesh(s.mesh):
        state = init_state(cfg, s.tx, s.shardings)
    return cfg, s.mesh, s.rules, s.abstract, state


@pytest.fixture(scope="module")
def born(request):
    """A train state made by ``init_state`` on the fsdp 4 × tensor 2 mesh (one compile, shared)."""
    from gpt3_jax.config import ModelConfig

    tiny = ModelConfig(
        n_layer=4, d_model=64, n_head=4, n_ctx=64, vocab_size=300, local_window=8, dtype="float32"
    )
    return _state(MESHES["fsdp4_tensor2"], tiny)


def test_params_sharded_as_rules_say(born):
    _, _, rules, abstract, state = born
    names = {k: sharding.logical_names(v) for k, v in _paths(abstract.params).items()}
    actual = {k: v[...].sharding.spec for k, v in _paths(state.params).items()}
    assert actual.keys() == names.keys()
    for key, logical in names.items():
        # every dimension of the tiny model divides its mesh axes, so no axis is dropped
        assert actual[key] == sharding.logical_to_spec(logical, rules), key
    # by hand: the stacked layers axis leads and is never sharded
    assert actual["groups.blocks.0.mlp.c_fc_w"] == P(None, "fsdp", "tensor")
    assert actual["groups.blocks.1.mlp.c_proj_w"] == P(None, "tensor", "fsdp")
    assert actual["groups.blocks.0.attn.c_attn_w"] == P(None, "fsdp", None, "tensor", None)
    assert actual["groups.blocks.0.attn.c_proj_w"] == P(None, "tensor", None, "fsdp")
    assert actual["embed.wte"] == P("tensor", "fsdp")
    assert actual["groups.blocks.0.ln_1.scale"] == P(None, None)


def test_train_state_born_sharded(born):
    _, _, _, _, state = born
    params = _paths(state.params)
    for key in ("embed.wte", "groups.blocks.0.mlp.c_fc_w", "groups.blocks.1.attn.c_attn_w"):
        arr = params[key][...]
        assert not arr.sharding.is_fully_replicated, key
        shard = arr.addressable_shards[0].data.shape
        assert np.prod(shard) == arr.size // 8, (key, shard)  # fsdp 4 × tensor 2: 1/8 per device
        assert len({s.device for s in arr.addressable_shards}) == 8
    is_adam = lambda x: isinstance(x, optax.ScaleByAdamState)
    adam = [s for s in jax.tree.leaves(state.opt_state, is_leaf=is_adam) if is_adam(s)]
    assert len(adam) == 1
    for moments in (adam[0].mu, adam[0].nu):
        moment = _paths(moments)
        assert moment.keys() == params.keys()
        for key, p in params.items():
            assert moment[key][...].sharding == p[...].sharding, key


def test_config_replaces_rules_table(tiny_model_config):
    cfg = load_config(
        None, ["mesh.fsdp=4", "mesh.tensor=2", "mesh.rules=[[embed,tensor],[mlp,fsdp],[act_batch,data,fsdp]]"]
    )
    cfg = cfg.replace(model=tiny_model_config)
    rules = sharding.rules_from_config(cfg.mesh.rules)
    assert rules == (("embed", "tensor"), ("mlp", "fsdp"), ("act_batch", ("data", "fsdp")))
    # the shardings init_state is jitted with (its out_shardings)
    shardings = setup(cfg).shardings
    specs = {k: v.spec for k, v in _paths(shardings.params).items()}
    assert specs["groups.blocks.0.mlp.c_fc_w"] == P(None, "tensor", "fsdp")
    assert specs["embed.wte"] == P(None, "tensor")  # vocab: not in the table, so replicated
    assert specs["groups.blocks.0.attn.c_attn_w"] == P(None, "tensor", None, None, None)
    adam = _paths(shardings.opt_state)
    assert adam["1.inner_state.0.mu.groups.blocks.0.mlp.c_fc_w"].spec == P(None, "tensor", "fsdp")
    with pytest.raises(UserError, match="unknown mesh axis 'model'"):
        sharding.rules_from_config((("embed", "model"),))


def test_mesh_not_matching_devices_is_user_error():
    with pytest.raises(UserError, match="needs 16 devices but there are 8"):
        sharding.make_mesh(MeshConfig(data=2, fsdp=4, tensor=2))
    with pytest.raises(UserError, match="not a multiple of 3"):
        sharding.make_mesh(MeshConfig(fsdp=-1, tensor=3))


def test_cli_mesh_and_batch_errors_exit_2(capsys):
    # a mesh for 8 devices planned on 4
    assert main(["plan", "configs/tiny.yaml", "--devices", "4", "mesh.fsdp=4", "mesh.tensor=2"]) == 2
    assert "needs 8 devices but there are 4" in capsys.readouterr().err
    # 4 sequences cannot split over 8 data-parallel shards
    assert main(["plan", "configs/tiny.yaml", "--devices", "8", "train.batch_size=4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not divisible by the data-parallel size 8" in err
    assert len(err.strip().splitlines()) == 1


def test_dcn_mesh_keeps_fsdp_and_tensor_inside_a_slice() -> None:
    """mesh.dcn_data=2 on 8 devices without slice_index (CPU: simulated slices of 4 consecutive
    devices): each slice is one (data 1, fsdp 2, tensor 2) block, stacked along data."""
    cfg = MeshConfig(dcn_data=2, fsdp=2, tensor=2)
    mesh = sharding.make_mesh(cfg, jax.devices()[:8])
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    ids = np.vectorize(lambda d: d.id)(mesh.devices)
    assert sorted(ids[0].ravel()) == [0, 1, 2, 3] and sorted(ids[1].ravel()) == [4, 5, 6, 7]


def test_slices_follow_slice_index() -> None:
    """On a multi-slice TPU the devices' slice_index decides the slices, in whatever order
    jax.devices() lists them; a mesh.dcn_data that is not the slice count is a UserError."""
    from types import SimpleNamespace

    devices = [SimpleNamespace(id=i, slice_index=i % 2) for i in range(8)]
    groups = sharding.slices(devices, 2)
    assert [[d.id for d in g] for g in groups] == [[0, 2, 4, 6], [1, 3, 5, 7]]
    with pytest.raises(UserError, match=r"mesh.dcn_data=4 but the devices are in 2 slice\(s\)"):
        sharding.slices(devices, 4)
    cpus = [SimpleNamespace(id=i) for i in range(6)]
    assert [[d.id for d in g] for g in sharding.slices(cpus, 3)] == [[0, 1], [2, 3], [4, 5]]
