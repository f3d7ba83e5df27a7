"""Orbax checkpoints: one module and one layout for training runs, converted weights and exports.

A checkpoint directory is an Orbax ``CheckpointManager`` root whose numbered step folders hold
these items (a params-only checkpoint, as ``convert from-hf`` writes, has just the first two):

    params     the model's parameters (nested dict of arrays, the NNX state's pure dict)
    config     the resolved run config (JSON, ``Config.to_dict()``)
    opt_state  optimizer state, its parameter-shaped trees as pure dicts  (training checkpoints)
    meta       step, tokens seen, RNG key                                   (training checkpoints)
    data       the data iterator's state (JSON)                             (training checkpoints)

Parameters (and the optimizer's moments) are stored in the stacked layout — each block parameter
[n_groups, ...] on a leading ``layers`` axis — whatever ``model.scan_layers`` the run has; a
per-layer model is converted at save and restore (``gpt3_jax.model.stack_layers``).

Any command that takes ``--checkpoint DIR`` accepts a run's workdir (``DIR/checkpoints``), a
manager root, or one step folder, local or in a bucket (``gs://``: Orbax and tensorstore write
there natively). A step counts only once Orbax has finalized it (locally its temporary folder
was renamed; in a bucket its commit file was written last), so a save cut short is never taken
for a checkpoint. A tokenizer beside the items (``tokenizer.model`` or ``tokenizer.json`` in the
manager root, see ``gpt3_jax.data.tokenizer``) travels with the checkpoint.

``restore`` is the one way back: it restores the items asked for into the shardings of the mesh
given (any mesh: a run saved on one continues on another) and lays the parameters out as the
config wants. ``sharding.attach`` is where shardings meet abstract arrays.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import jax
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh

from gpt3_jax import paths, sharding
from gpt3_jax.config import Config, config_from_dict
from gpt3_jax.errors import UserError

if TYPE_CHECKING:
    from gpt3_jax.data.tokenizer import Tokenizer

PARAMS_ONLY = ("params", "config")
TRAINING_ITEMS = ("params", "config", "opt_state", "meta", "data")


def manager(
    directory: paths.PathLike,
    *,
    keep: int | None = None,
    async_save: bool = False,
    item_names: tuple[str, ...] = TRAINING_ITEMS,
) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, enable_async_checkpointing=async_save, create=True
    )
    return ocp.CheckpointManager(paths.absolute(directory), options=options, item_names=item_names)


def resolve(path: paths.PathLike) -> tuple[paths.Path, int]:
    """A workdir, manager root or step folder → (manager root, step). The latest step Orbax has
    finalized wins; a step folder named directly must be finalized too."""
    p = paths.as_path(path)
    if not p.exists():
        raise UserError(f"checkpoint {str(p)!r} not found; pass a run's workdir or a checkpoint directory")
    if (p / "checkpoints").is_dir():
        p = p / "checkpoints"
    if p.name.isdigit() and (p / "params").exists():
        if not ocp.utils.is_checkpoint_finalized(p):
            raise UserError(
                f"{str(p)!r} is a checkpoint whose save was cut short; pass its run's workdir or "
                "checkpoint root to use the latest complete one"
            )
        return p.parent, int(p.name)
    steps = sorted(ocp.utils.checkpoint_steps(p))
    if not steps:
        if (p / "config.json").is_file():
            raise UserError(
                f"{str(p)!r} is a Hugging Face folder, not a gpt3_jax checkpoint; convert it first: "
                f"gpt3-jax convert from-hf {p} OUT_DIR"
            )
        raise UserError(
            f"{str(p)!r} holds no complete checkpoint (no finalized step folder); pass a run's workdir "
            "or a checkpoint folder"
        )
    return p, steps[-1]


def tokenizer_path(path: paths.PathLike) -> paths.Path | None:
    """The tokenizer file stored with a checkpoint (in its root, or its run's workdir), if any."""
    from gpt3_jax.data.tokenizer import find_tokenizer

    root, _ = resolve(path)
    return find_tokenizer(root) or find_tokenizer(root.parent)


def load_config(path: paths.PathLike) -> Config:
    root, step = resolve(path)
    mgr = manager(root, item_names=PARAMS_ONLY)
    try:
        restored = mgr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    finally:
        mgr.close()
    return config_from_dict(restored.config)


# --- the stored layout ----------------------------------------------------------------------


def _is_state(x: Any) -> bool:
    return isinstance(x, nnx.State)


def _pure(tree: Any) -> Any:
    """Every NNX state inside ``tree`` (the parameters, an optimizer's moments) as a pure dict."""
    return jax.tree.map(lambda s: s.to_pure_dict() if _is_state(s) else s, tree, is_leaf=_is_state)


def _relayout(tree: Any, cfg: Config, to_stored: bool) -> Any:
    """Parameter-shaped pure dicts inside ``tree`` between the model's layout and the stored
    (stacked) one; the identity for a scanned model."""
    from gpt3_jax.model import stack_layers, unstack_layers

    if cfg.model.scan_layers:
        return tree
    convert = stack_layers if to_stored else unstack_layers

    def one(x: Any) -> Any:
        return convert(x, cfg.model) if isinstance(x, dict) and "groups" in x else x

    return jax.tree.map(one, tree, is_leaf=lambda x: isinstance(x, dict) and "groups" in x)


def _fill(template: Any, pure: Any) -> Any:
    """``template`` (a tree holding NNX states) with each state's values taken from ``pure``."""

    def one(t: Any, p: Any) -> Any:
        if not _is_state(t):
            return p
        filled = jax.tree.map(lambda v: v, t)  # a new State, same variables and metadata
        filled.replace_by_pure_dict(p)
        return filled

    return jax.tree.map(one, template, pure, is_leaf=_is_state)


def stored_config(cfg: Config) -> Config:
    """The config whose model has the stored (stacked) parameter layout."""
    return cfg.replace(model=dataclasses.replace(cfg.model, scan_layers=True))


# --- saving ---------------------------------------------------------------------------------


def save_params(
    directory: paths.PathLike,
    cfg: Config,
    params: nnx.State | dict[str, Any],
    *,
    step: int = 0,
    tokenizer: Tokenizer | paths.PathLike | None = None,
) -> paths.Path:
    """Write a params-only checkpoint (what ``convert from-hf`` produces) and return its root.

    ``tokenizer`` (a ``Tokenizer``, or a path ``load_tokenizer`` takes) is stored beside the steps."""
    root = paths.absolute(directory)
    stored = _relayout(_pure(params), cfg, to_stored=True)
    mgr = manager(root, item_names=PARAMS_ONLY)
    mgr.save(
        step,
        args=ocp.args.Composite(
            params=ocp.args.StandardSave(stored), config=ocp.args.JsonSave(cfg.to_dict())
        ),
        force=True,
    )
    mgr.wait_until_finished()
    mgr.close()
    if tokenizer is not None:
        from gpt3_jax.data.tokenizer import Tokenizer, load_tokenizer

        (tokenizer if isinstance(tokenizer, Tokenizer) else load_tokenizer(tokenizer)).save(root)
    return root


# --- restoring ------------------------------------------------------------------------------


def restore(
    root: paths.PathLike,
    step: int,
    cfg: Config,
    *,
    mesh: Mesh | None = None,
    rules: sharding.Rules = sharding.DEFAULT_RULES,
    tx: Any = None,
    mgr: ocp.CheckpointManager | None = None,
) -> dict[str, Any]:
    """Restore checkpoint ``root/step`` for a model configured by ``cfg``.

    Returns ``params`` (an NNX state in ``cfg``'s layout) and, when the optimizer ``tx`` is given,
    ``opt_state``, ``meta`` and ``data`` too. With a ``mesh`` every array is laid out by ``rules``
    over it; without, on the default device. A checkpoint of another model shape is a UserError.
    """
    from gpt3_jax.model import abstract_gpt

    stored_cfg = stored_config(cfg)
    _, stored_params = abstract_gpt(stored_cfg.model)
    targets: dict[str, Any] = {"params": stored_params}
    if tx is not None:
        targets["opt_state"] = jax.eval_shape(tx.init, stored_params)
        targets["meta"] = {
            "step": jax.ShapeDtypeStruct((), "int32"),
            "tokens": jax.ShapeDtypeStruct((), "float32"),
            "rng": jax.ShapeDtypeStruct((2,), "uint32"),
        }
    if mesh is not None:
        targets = sharding.attach(targets, sharding.state_shardings(targets, mesh, rules))
    args: dict[str, Any] = {k: ocp.args.StandardRestore(_pure(v)) for k, v in targets.items()}
    if tx is not None:
        args["data"] = ocp.args.JsonRestore()

    own = mgr is None
    mgr = mgr or manager(root, item_names=PARAMS_ONLY if tx is None else TRAINING_ITEMS)
    try:
        restored = mgr.restore(step, args=ocp.args.Composite(**args))
    except (ValueError, KeyError) as exc:
        m = stored_cfg.model
        raise UserError(
            f"checkpoint {str(root)!r} step {step} does not match this model config "
            f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); set the model.* keys "
            f"to the checkpoint's or use another checkpoint (this config: n_layer={m.n_layer}, "
            f"d_model={m.d_model}, n_head={m.n_head}, n_ctx={m.n_ctx}, vocab_size={m.vocab_size})"
        ) from None
    finally:
        if own:
            mgr.close()

    out = {k: restored[k] for k in args}
    _, params = abstract_gpt(cfg.model, rules)
    template: dict[str, Any] = {"params": params}
    if tx is not None:
        template["opt_state"] = jax.eval_shape(tx.init, params)
    pure = {k: out[k] for k in template}
    if not cfg.model.scan_layers:  # one jitted relayout, into the mesh's shardings
        out_shardings = None if mesh is None else _pure(sharding.state_shardings(template, mesh, rules))
        pure = jax.jit(lambda t: _relayout(t, cfg, to_stored=False), out_shardings=out_shardings)(pure)
    return out | _fill(template, pure)


def load_model(
    path: paths.PathLike,
    *,
    mesh: Mesh | None = None,
    rules: sharding.Rules | None = None,
    model_overrides: dict | None = None,
) -> tuple[Config, nnx.Module]:
    """Restore a checkpoint's parameters into a ready ``GPT`` (sharded over ``mesh`` if given, by
    ``rules``, which the model then also uses for its activations).

    ``model_overrides`` changes model settings that do not touch parameter shapes (dtype, remat,
    scan_layers) for the loaded model.
    """
    from gpt3_jax.model import abstract_gpt

    rules = rules or sharding.DEFAULT_RULES
    root, step = resolve(path)
    cfg = load_config(root / str(step))
    if model_overrides:
        cfg = cfg.replace(model=dataclasses.replace(cfg.model, **model_overrides))
    graphdef, _ = abstract_gpt(cfg.model, rules)
    params = restore(root, step, cfg, mesh=mesh, rules=rules)["params"]
    return cfg, nnx.merge(graphdef, params)


def load_init_params(path: paths.PathLike, cfg: Config, *, mesh: Mesh, rules: sharding.Rules) -> nnx.State:
    """Fine-tuning: parameters only, from a training run or a converted checkpoint, laid out for
    this run. A model of another shape is a UserError naming the first differing parameter."""
    from gpt3_jax.model import abstract_gpt

    root, step = resolve(path)
    source = load_config(root / str(step))
    shapes = lambda c: {  # noqa: E731
        jax.tree_util.keystr(p): v.shape
        for p, v in jax.tree_util.tree_leaves_with_path(
            abstract_gpt(stored_config(c).model)[1].to_pure_dict()
        )
    }
    mine, theirs = shapes(cfg), shapes(source)
    m = source.model
    for name in sorted(set(mine) | set(theirs)):
        if mine.get(name) != theirs.get(name):
            raise UserError(
                f"train.init_from={path}: parameter {name} has shape {theirs.get(name, 'nothing')} there but "
                f"{mine.get(name, 'nothing')} in this config; set the model.* keys to the checkpoint's "
                f"(n_layer={m.n_layer}, d_model={m.d_model}, n_head={m.n_head}, n_ctx={m.n_ctx}, "
                f"vocab_size={m.vocab_size}, attention_pattern={list(m.attention_pattern)})"
            )
    return restore(root, step, cfg, mesh=mesh, rules=rules)["params"]


# --- a training run's checkpoints -----------------------------------------------------------


class Checkpointer:
    """A run's ``WORKDIR/checkpoints``: async saves of the train state and the data iterator's
    position, keeping the last ``checkpoint.keep``; restores onto any mesh."""

    def __init__(self, workdir: paths.PathLike, cfg: Config):
        self.cfg = cfg
        self.root = paths.absolute(workdir) / "checkpoints"
        self.mgr = manager(self.root, keep=cfg.checkpoint.keep, async_save=cfg.checkpoint.async_save)

    def latest_step(self) -> int | None:
        """The newest complete checkpoint (Orbax ignores a save cut short: the temporary folder of
        one on a local disk, a step folder without its commit file in a bucket)."""
        return self.mgr.latest_step()

    def save(self, state: Any, data_state: dict[str, Any]) -> None:
        """Start saving ``state`` (a ``TrainState``) at its step; returns once the arrays are off
        the devices."""
        stored = _relayout(_pure({"params": state.params, "opt_state": state.opt_state}), self.cfg, True)
        meta = {"step": state.step, "tokens": state.tokens, "rng": state.rng}
        self.mgr.save(
            int(state.step),
            args=ocp.args.Composite(
                params=ocp.args.StandardSave(stored["params"]),
                opt_state=ocp.args.StandardSave(stored["opt_state"]),
                meta=ocp.args.StandardSave(meta),
                data=ocp.args.JsonSave(data_state),
                config=ocp.args.JsonSave(self.cfg.to_dict()),
            ),
            force=True,
        )

    def restore(self, step: int, *, mesh: Mesh, rules: sharding.Rules, tx: Any) -> tuple[Any, dict[str, Any]]:
        """The train state at ``step`` laid out on ``mesh``, and the data iterator's state."""
        from gpt3_jax.training.state import TrainState

        try:
            r = restore(self.root, step, self.cfg, mesh=mesh, rules=rules, tx=tx, mgr=self.mgr)
        except UserError as exc:
            raise UserError(f"{exc}; to start afresh, use a new run.workdir") from None
        meta = r["meta"]
        return TrainState(r["params"], r["opt_state"], meta["step"], meta["tokens"], meta["rng"]), r["data"]

    def save_tokenizer(self, tokenizer: Tokenizer) -> None:
        """Write the run's tokenizer beside the steps, where ``sample`` looks for it (atomically)."""
        tokenizer.save(self.root)

    def wait(self) -> None:
        self.mgr.wait_until_finished()

    def close(self) -> None:
        self.mgr.wait_until_finished()
        self.mgr.close()
