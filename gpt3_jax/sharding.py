"""Logical axis names → mesh axes: the one place that knows about the device mesh.

Model code names its axes (``embed``, ``mlp``, ``heads``, ``act_batch`` …) and never a mesh axis.
This module holds the rules table that maps them onto the mesh axes ``data``, ``fsdp`` and
``tensor``, builds the mesh from a ``MeshConfig``, and is the only module that touches Flax's
partitioning metadata.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gpt3_jax.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")

# Logical name → mesh axis (a name, a tuple of names, or None for replicated).
Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]

DEFAULT_RULES: Rules = (
    # parameters
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("head_dim", None),
    ("qkv", None),
    ("position", None),
    ("norm", None),
    ("layers", None),
    # activations
    ("act_batch", ("data", "fsdp")),
    ("act_len", None),
    # The residual stream is sharded over tensor between blocks (as MaxText's activation_embed):
    # remat saves one [b, t, d] per layer group, which replicated over tensor does not fit at 175B.
    ("act_embed", "tensor"),
    ("act_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
)


def rules_from_config(rules: Sequence[Sequence[str]]) -> Rules:
    """A config's ``mesh.rules`` ([[name, axis...], ...]) as a rules table; empty → the default.

    ``[name]`` alone means replicated; ``[name, a, b]`` shards over mesh axes a and b together.
    """
    if not rules:
        return DEFAULT_RULES
    table = []
    for rule in rules:
        name, *axes = rule
        for axis in axes:
            if axis not in MESH_AXES:
                raise UserError(
                    f"mesh.rules: {name!r} maps to unknown mesh axis {axis!r}; use {list(MESH_AXES)}"
                )
        table.append((name, None if not axes else axes[0] if len(axes) == 1 else tuple(axes)))
    return tuple(table)


def logical_to_spec(names: Sequence[str | None], rules: Rules = DEFAULT_RULES) -> PartitionSpec:
    """Logical axis names of one array → a PartitionSpec over mesh axes. Unknown names replicate."""
    table = dict(rules)
    used: set[str] = set()
    spec = []
    for name in names:
        axes = table.get(name) if name is not None else None
        flat = (axes,) if isinstance(axes, str) else tuple(axes or ())
        flat = tuple(a for a in flat if a not in used)  # a mesh axis shards one dimension at most
        used.update(flat)
        spec.append(None if not flat else flat[0] if len(flat) == 1 else flat)
    return PartitionSpec(*spec)


def _fit(spec: PartitionSpec, shape: Sequence[int], mesh: Any) -> PartitionSpec:
    """Drop mesh axes from dimensions they do not divide (4 heads on tensor=8 stay replicated)."""
    fitted = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)), strict=True):
        flat = (axes,) if isinstance(axes, str) else tuple(axes or ())
        kept = []
        for axis in flat:
            if dim % (math.prod(mesh.shape[a] for a in kept) * mesh.shape[axis]) == 0:
                kept.append(axis)
        fitted.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
    return PartitionSpec(*fitted)


# --- parameters -----------------------------------------------------------------------------


def param(
    rngs: nnx.Rngs,
    init: Callable[..., jax.Array],
    shape: Sequence[int],
    names: Sequence[str | None],
    dtype: Any = jnp.float32,
) -> nnx.Param:
    """A parameter annotated with logical axis names.

    It is never sharded eagerly: the trainer and the loaders lay parameters out from the names
    (``state_shardings``, ``jit(init, out_shardings=…)``), so modules build the same with or
    without a mesh set.
    """
    value = init(rngs.params(), tuple(shape), dtype)
    return nnx.Param(value, out_sharding=tuple(names), eager_sharding=False)


def logical_names(variable: nnx.Variable) -> tuple[str | None, ...]:
    """The logical axis names a variable was annotated with (``()`` when none)."""
    return tuple(variable.get_metadata().get("out_sharding") or ())


def state_specs(state: nnx.State, rules: Rules = DEFAULT_RULES) -> nnx.State:
    """PartitionSpecs (over mesh axes) for every variable of an NNX state, from its names."""
    return jax.tree.map(
        lambda v: logical_to_spec(logical_names(v), rules),
        state,
        is_leaf=lambda x: isinstance(x, nnx.Variable),
    )


def state_shardings(state: Any, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Any:
    """NamedShardings for a state pytree (NNX variables, or plain arrays ≈ replicated)."""

    def one(v: Any) -> NamedSharding:
        if isinstance(v, nnx.Variable):
            spec = _fit(logical_to_spec(logical_names(v), rules), v.shape, mesh)
        else:
            spec = PartitionSpec()
        return NamedSharding(mesh, spec)

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def eval_shape(build: Callable[[], Any], rules: Rules = DEFAULT_RULES) -> Any:
    """``nnx.eval_shape(build)``: shapes only, the same with or without a mesh set (inside one,
    Flax resolves the variables' logical names, so it is given ``rules``)."""
    with nnx.use_eager_sharding(False), nnx.logical_axis_rules(rules):
        return nnx.eval_shape(build)


def attach(abstract: Any, shardings: Any) -> Any:
    """Abstract leaves (``ShapeDtypeStruct``, NNX variables holding them) with ``shardings``
    attached: a restore target, or the arguments of an ahead-of-time compile."""

    def one(a: Any, s: NamedSharding) -> Any:
        if isinstance(a, nnx.Variable):
            return a.replace(jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s))
        return jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s)

    return jax.tree.map(one, abstract, shardings, is_leaf=lambda x: isinstance(x, nnx.Variable))


# --- activations ----------------------------------------------------------------------------


def constrain(x: jax.Array, names: Sequence[str | None], rules: Rules) -> jax.Array:
    """Pin an activation's sharding by logical names through ``rules``; a no-op when no mesh is
    set. A mesh axis that does not divide its dimension is dropped (4 heads on tensor=8)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, _fit(logical_to_spec(names, rules), x.shape, mesh))


# --- the mesh -------------------------------------------------------------------------------


def mesh_shape(cfg: Any, n_devices: int) -> dict[str, int]:
    """Resolve ``mesh.data/fsdp/tensor`` (one may be -1) and ``dcn_data`` against a device count.

    The returned ``data`` size includes the ``dcn_data`` slices (data parallelism spans both)."""
    ici = {"data": cfg.data, "fsdp": cfg.fsdp, "tensor": cfg.tensor}
    known = cfg.dcn_data * math.prod(s for s in ici.values() if s != -1)
    desc = f"mesh.data={cfg.data} mesh.fsdp={cfg.fsdp} mesh.tensor={cfg.tensor}"
    desc += f" mesh.dcn_data={cfg.dcn_data}" if cfg.dcn_data != 1 else ""
    free = [k for k, s in ici.items() if s == -1]
    if free:
        if n_devices % known:
            raise UserError(
                f"{desc} cannot fill {n_devices} devices ({n_devices} is not a multiple of {known}); "
                "choose sizes whose product divides the device count"
            )
        ici[free[0]] = n_devices // known
    if cfg.dcn_data * math.prod(ici.values()) != n_devices:
        raise UserError(
            f"{desc} needs {cfg.dcn_data * math.prod(ici.values())} devices but there are "
            f"{n_devices}; make the product of the sizes equal the device count (or set one to -1)"
        )
    return {"data": ici["data"] * cfg.dcn_data, "fsdp": ici["fsdp"], "tensor": ici["tensor"]}


def slices(devices: Sequence[Any], n: int) -> list[list[Any]]:
    """``devices`` grouped into ``n`` slices: by ``slice_index`` on a multi-slice TPU; otherwise
    (CPU devices simulating slices in ``gpt3-jax plan --slices``, GPUs) in ``n`` equal blocks of
    consecutive devices, which on a GPU cluster are hosts."""
    if hasattr(devices[0], "slice_index"):
        groups: dict[int, list[Any]] = {}
        for d in devices:
            groups.setdefault(d.slice_index, []).append(d)
        if len(groups) != n:
            raise UserError(
                f"mesh.dcn_data={n} but the devices are in {len(groups)} slice(s); "
                f"set mesh.dcn_data={len(groups)}"
            )
        return [groups[i] for i in sorted(groups)]
    if len(devices) % n:
        raise UserError(f"mesh.dcn_data={n} does not divide the {len(devices)} devices into equal slices")
    k = len(devices) // n
    return [list(devices[i * k : (i + 1) * k]) for i in range(n)]


def make_mesh(cfg: Any, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The (data, fsdp, tensor) mesh for a ``MeshConfig``. With ``mesh.dcn_data`` > 1, a hybrid
    mesh whose data axis spans slices (ICI inside a slice, DCN between slices): each slice's
    devices form one (data / dcn_data, fsdp, tensor) block, as jax's create_hybrid_device_mesh
    lays them out, and the blocks are stacked along ``data``, so fsdp and tensor stay inside a
    slice and only data parallelism crosses DCN."""
    devices = list(devices if devices is not None else jax.devices())
    sizes = mesh_shape(cfg, len(devices))
    shape = tuple(sizes[a] for a in MESH_AXES)
    auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    if cfg.dcn_data == 1:
        return jax.make_mesh(shape, MESH_AXES, devices=devices, axis_types=auto)
    from jax.experimental import mesh_utils

    ici = (shape[0] // cfg.dcn_data, shape[1], shape[2])
    blocks = [
        mesh_utils.create_device_mesh(ici, group, allow_split_physical_axes=True)
        for group in slices(devices, cfg.dcn_data)
    ]
    return Mesh(np.concatenate(blocks, axis=0), MESH_AXES, axis_types=auto)


def data_parallel_size(mesh: Mesh, rules: Rules = DEFAULT_RULES) -> int:
    """How many ways the batch is split: the product of the mesh axes ``act_batch`` maps to."""
    spec = logical_to_spec(("act_batch",), rules)[0]
    flat = (spec,) if isinstance(spec, str) else tuple(spec or ())
    return math.prod(mesh.shape[a] for a in flat)


def batch_sharding(mesh: Mesh, ndim: int = 2, rules: Rules = DEFAULT_RULES) -> NamedSharding:
    """Sharding of a [batch, time, ...] input: batch over the data-parallel axes."""
    return NamedSharding(mesh, logical_to_spec(("act_batch",) + (None,) * (ndim - 1), rules))
