"""Orbax checkpoints: one layout for training runs, converted weights and exports.

A checkpoint directory is an Orbax ``CheckpointManager`` root whose numbered step folders hold
these items (a params-only checkpoint, as ``convert from-hf`` writes, has just the first two):

    params     the model's parameters (nested dict of arrays, the NNX state's pure dict)
    config     the resolved run config (JSON, ``Config.to_dict()``)
    opt_state  optimizer state                               (training checkpoints)
    meta       step, RNG key                                 (training checkpoints)
    data       the data iterator's state (JSON)              (training checkpoints)

Any command that takes ``--checkpoint DIR`` accepts a run's workdir (``DIR/checkpoints``), a
manager root, or one step folder. A tokenizer beside the items (``tokenizer.model`` or
``tokenizer.json`` in the manager root, see ``gpt3_jax.data.tokenizer``) travels with the checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh

from gpt3_jax.config import Config, config_from_dict
from gpt3_jax.errors import UserError

if TYPE_CHECKING:
    from gpt3_jax.data.tokenizer import Tokenizer

PARAMS_ONLY = ("params", "config")
TRAINING_ITEMS = ("params", "config", "opt_state", "meta", "data")


def manager(
    directory: str | Path,
    *,
    keep: int | None = None,
    async_save: bool = False,
    item_names: tuple[str, ...] = TRAINING_ITEMS,
) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, enable_async_checkpointing=async_save, create=True
    )
    return ocp.CheckpointManager(Path(directory).absolute(), options=options, item_names=item_names)


def resolve(path: str | Path) -> tuple[Path, int]:
    """A workdir, manager root or step folder → (manager root, step). Latest complete step wins."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"checkpoint {str(p)!r} not found; pass a run's workdir or a checkpoint directory")
    if (p / "checkpoints").is_dir():
        p = p / "checkpoints"
    if p.name.isdigit() and (p / "params").exists():
        return p.parent, int(p.name)
    steps = sorted(int(c.name) for c in p.iterdir() if c.name.isdigit() and (c / "params").exists())
    if not steps:
        raise UserError(f"{str(p)!r} holds no complete checkpoint (no step folder with params)")
    return p, steps[-1]


def tokenizer_path(path: str | Path) -> Path | None:
    """The tokenizer file stored with a checkpoint (in its root, or its run's workdir), if any."""
    from gpt3_jax.data.tokenizer import find_tokenizer

    root, _ = resolve(path)
    return find_tokenizer(root) or find_tokenizer(root.parent)


def load_config(path: str | Path) -> Config:
    root, step = resolve(path)
    mgr = manager(root, item_names=PARAMS_ONLY)
    try:
        restored = mgr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    finally:
        mgr.close()
    return config_from_dict(restored.config)


def save_params(
    directory: str | Path,
    cfg: Config,
    params: nnx.State | dict[str, Any],
    *,
    step: int = 0,
    tokenizer: Tokenizer | str | Path | None = None,
) -> Path:
    """Write a params-only checkpoint (what ``convert from-hf`` produces) and return its root.

    ``tokenizer`` (a ``Tokenizer``, or a path ``load_tokenizer`` takes) is stored beside the steps."""
    root = Path(directory).absolute()
    pure = params.to_pure_dict() if isinstance(params, nnx.State) else params
    mgr = manager(root, item_names=PARAMS_ONLY)
    mgr.save(
        step,
        args=ocp.args.Composite(params=ocp.args.StandardSave(pure), config=ocp.args.JsonSave(cfg.to_dict())),
        force=True,
    )
    mgr.wait_until_finished()
    mgr.close()
    if tokenizer is not None:
        from gpt3_jax.data.tokenizer import Tokenizer, load_tokenizer

        (tokenizer if isinstance(tokenizer, Tokenizer) else load_tokenizer(tokenizer)).save(root)
    return root


def abstract_params(
    cfg: Config, mesh: Mesh | None = None, rules: Any = None
) -> tuple[nnx.GraphDef, nnx.State]:
    """The model's graph and abstract parameter state, with shardings on ``mesh`` when given."""
    from gpt3_jax import sharding
    from gpt3_jax.model import abstract_gpt

    graphdef, state = abstract_gpt(cfg.model)
    if mesh is not None:
        shardings = sharding.state_shardings(state, mesh, rules or sharding.DEFAULT_RULES)
        state = jax.tree.map(
            lambda v, s: v.replace(jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s)),
            state,
            shardings,
            is_leaf=lambda x: isinstance(x, nnx.Variable),
        )
    return graphdef, state


def load_model(
    path: str | Path, *, mesh: Mesh | None = None, rules: Any = None, model_overrides: dict | None = None
) -> tuple[Config, nnx.Module]:
    """Restore a checkpoint's parameters into a ready ``GPT`` (sharded over ``mesh`` if given).

    ``model_overrides`` changes model settings that do not touch parameter shapes (dtype, remat,
    scan_layers) for the loaded model.
    """
    import dataclasses

    root, step = resolve(path)
    cfg = load_config(root / str(step))
    if model_overrides:
        cfg = cfg.replace(model=dataclasses.replace(cfg.model, **model_overrides))
    graphdef, abstract = abstract_params(cfg, mesh, rules)
    return cfg, nnx.merge(graphdef, restore_params(root, step, abstract))


def restore_params(root: str | Path, step: int, target: nnx.State) -> nnx.State:
    """Fill ``target`` (abstract parameters; their shardings, if set, lay out the result) from the
    ``params`` item of checkpoint ``root/step``. A shape mismatch is a UserError."""
    mgr = manager(root, item_names=PARAMS_ONLY)
    try:
        restored = mgr.restore(
            step, args=ocp.args.Composite(params=ocp.args.StandardRestore(target.to_pure_dict()))
        )
    except (ValueError, KeyError) as exc:
        raise UserError(
            f"checkpoint {str(root)!r} step {step} does not match the model config: "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from None
    finally:
        mgr.close()
    nnx.replace_by_pure_dict(target, restored.params)
    return target
