"""Orbax checkpoints: one module and one layout for training runs, converted weights and exports.

A checkpoint directory is an Orbax ``CheckpointManager`` root whose numbered step folders hold
these items (a params-only checkpoint, as ``convert from-hf`` writes, has just the first two):

    params     the model's parameters (nested dict of arrays, the NNX state's pure dict)
    config     the resolved run config (JSON, ``Config.to_dict()``)
    opt_state  optimizer state, its parameter-shaped trees as pure dicts  (training checkpoints)
    meta       step, tokens seen, RNG key                                   (training checkpoints)
    data       the data iterator's state (JSON)                             (training checkpoints)
    digest     every saved array's shape, dtype and checksum (JSON)

Parameters (and the optimizer's moments) are stored in the stacked layout — each block parameter
[n_groups, ...] on a leading ``layers`` axis — whatever ``model.scan_layers`` the run has; a
per-layer model is converted at save and restore (``gpt3_jax.model.stack_layers``).

Any command that takes ``--checkpoint DIR`` accepts a run's workdir (``DIR/checkpoints``), a
manager root, or one step folder, local or in a bucket (``gs://``: Orbax and tensorstore write
there natively). A step counts only once Orbax has finalized it (locally its temporary folder
was renamed; in a bucket its commit file was written last), so a save cut short is never taken
for a checkpoint. A tokenizer beside the items (``tokenizer.model`` or ``tokenizer.json`` in the
manager root, see ``gpt3_jax.data.tokenizer``) travels with the checkpoint.

A checkpoint damaged after it was written (a file truncated or deleted, bytes flipped) is caught
at restore: reading it fails, or an array's checksum (recomputed on the devices) differs from
the one in ``digest``. A training run then falls back to the previous complete step with one
warning line; see docs/reliability.md for what survives which fault.

``restore`` is the one way back: it restores the items asked for into the shardings of the mesh
given (any mesh: a run saved on one continues on another) and lays the parameters out as the
config wants. ``sharding.attach`` is where shardings meet abstract arrays.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh

from gpt3_jax import paths, sharding
from gpt3_jax.config import Config, config_from_dict
from gpt3_jax.errors import UserError

if TYPE_CHECKING:
    from gpt3_jax.data.tokenizer import Tokenizer

PARAMS_ONLY = ("params", "config", "digest")
TRAINING_ITEMS = ("params", "config", "opt_state", "meta", "data", "digest")
ARRAY_ITEMS = ("params", "opt_state", "meta")  # the items ``digest`` covers


class SaveError(UserError):
    """A checkpoint could not be written (a full disk, a file-size limit, a failing bucket); the
    older checkpoints are intact. The CLI exits 4."""


class DamagedError(Exception):
    """A finalized step that cannot be read back as it was written (``restore`` says why)."""


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
    if not p.is_dir():
        raise UserError(
            f"checkpoint {str(p)!r} is a file, not a folder; pass a run's workdir or a checkpoint directory"
        )
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


def _stored(tree: Any, cfg: Config) -> Any:
    """``tree`` (pure dicts) in the stored layout: for a per-layer model one jitted program that
    stacks every parameter and moment (one compile, where stacking leaf by leaf compiled once per
    leaf shape); the arrays themselves for a scanned model (a jitted identity would copy them)."""
    return tree if cfg.model.scan_layers else _jit_stored(tree, cfg)


_jit_stored = jax.jit(lambda tree, cfg: _relayout(tree, cfg, to_stored=True), static_argnums=1)


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


# --- the digest: what was written, to know it when we read it back ----------------------------


def _words(x: jax.Array) -> jax.Array:
    """The bits of ``x`` as uint32 words, elementwise (no reshape: a sharded array stays put)."""
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    size = x.dtype.itemsize
    if size == 8:  # one trailing axis of two words
        return jax.lax.bitcast_convert_type(x, jnp.uint32)
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[size]
    return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


def _checksum(x: jax.Array) -> jax.Array:
    """Σ word × (2·index + 1) mod 2³²: every flipped bit and every moved word changes it (the
    weights are odd), and integer sums are exact, so any mesh and sharding gives the same number."""
    w = _words(x)
    index = jnp.zeros(w.shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(w.ndim)):
        index = index + jax.lax.broadcasted_iota(jnp.uint32, w.shape, axis) * jnp.uint32(stride)
        stride = (stride * w.shape[axis]) % 2**32
    return jnp.sum(w * (index * jnp.uint32(2) + jnp.uint32(1)), dtype=jnp.uint32)


_checksums = jax.jit(lambda tree: jax.tree.map(_checksum, tree))


def _host_int(x: jax.Array) -> int:
    """A replicated scalar's value on this process (also when other processes hold it too)."""
    return int(np.asarray(x.addressable_shards[0].data if isinstance(x, jax.Array) else x))


def digest(items: dict[str, Any]) -> dict[str, dict[str, list]]:
    """item → leaf path → [shape, dtype, checksum] for the array trees in ``items`` (computed on
    the devices, the arrays stay where they are; one small transfer of the checksums)."""
    sums = _checksums(items)
    out: dict[str, dict[str, list]] = {}
    for name, tree in items.items():
        leaves = jax.tree_util.tree_leaves_with_path(tree)
        flat = jax.tree_util.tree_leaves(sums[name])
        out[name] = {
            jax.tree_util.keystr(path): [list(np.shape(x)), str(np.dtype(x.dtype)), _host_int(c)]
            for (path, x), c in zip(leaves, flat, strict=True)
        }
    return out


def _first_difference(stored: dict[str, list], mine: dict[str, list], what: int) -> str | None:
    """The first leaf whose entry (index ``what``: 0 shape, 2 checksum) differs, described."""
    for name in sorted(set(stored) | set(mine)):
        a, b = stored.get(name), mine.get(name)
        if a is None or b is None or a[what] != b[what]:
            return name
    return None


def _param_shapes(cfg: Config) -> dict[str, tuple[int, ...]]:
    from gpt3_jax.model import abstract_gpt

    pure = abstract_gpt(stored_config(cfg).model)[1].to_pure_dict()
    return {jax.tree_util.keystr(p): v.shape for p, v in jax.tree_util.tree_leaves_with_path(pure)}


def _shape_mismatch(cfg: Config, source: Config) -> str | None:
    """The first parameter whose shape differs between the two configs' models, described."""
    mine, theirs = _param_shapes(cfg), _param_shapes(source)
    for name in sorted(set(mine) | set(theirs)):
        if mine.get(name) != theirs.get(name):
            there, here = theirs.get(name, "nothing"), mine.get(name, "nothing")
            return f"parameter {name} has shape {there} there but {here} in this config"
    return None


def _model_keys(m: Any) -> str:
    return (
        f"n_layer={m.n_layer}, d_model={m.d_model}, n_head={m.n_head}, n_ctx={m.n_ctx}, "
        f"vocab_size={m.vocab_size}, attention_pattern={list(m.attention_pattern)}"
    )


def _reason(exc: BaseException) -> str:
    """An exception as a short one-line reason (tensorstore's messages run long)."""
    text = " ".join(str(exc).split()).split(" See full TensorStore details")[0]
    text = text if len(text) <= 200 else text[:197] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


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
    stored = _stored(_pure(params), cfg)
    mgr = manager(root, item_names=PARAMS_ONLY)
    mgr.save(
        step,
        args=ocp.args.Composite(
            params=ocp.args.StandardSave(stored),
            config=ocp.args.JsonSave(cfg.to_dict()),
            digest=ocp.args.JsonSave(digest({"params": stored})),
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


def finalized_steps(root: paths.PathLike) -> list[int]:
    """The steps Orbax has finalized under ``root``, newest first."""
    return sorted(ocp.utils.checkpoint_steps(paths.as_path(root)), reverse=True)


def restore(
    root: paths.PathLike,
    step: int,
    cfg: Config,
    *,
    mesh: Mesh | None = None,
    rules: sharding.Rules = sharding.DEFAULT_RULES,
    tx: Any = None,
    mgr: ocp.CheckpointManager | None = None,
    fall_back: bool = False,
) -> dict[str, Any]:
    """Restore checkpoint ``root/step`` for a model configured by ``cfg``.

    Returns ``params`` (an NNX state in ``cfg``'s layout) and, when the optimizer ``tx`` is given,
    ``opt_state``, ``meta`` and ``data`` too, and ``step``, the step restored. With a ``mesh``
    every array is laid out by ``rules`` over it; without, on the default device.

    A checkpoint of another model shape (or optimizer) is a UserError. A damaged step (a file
    missing or unreadable, a checksum that differs from its digest) is a UserError too, unless
    ``fall_back``: then one warning line names it and the next older finalized step is tried,
    and only when none is usable is it an error.
    """
    own = mgr is None
    mgr = mgr or manager(root, item_names=PARAMS_ONLY if tx is None else TRAINING_ITEMS)
    steps = [step, *(s for s in finalized_steps(root) if s < step)] if fall_back else [step]
    damaged: list[tuple[int, str]] = []
    try:
        for i, s in enumerate(steps):
            try:
                out = _restore_step(root, s, cfg, mesh=mesh, rules=rules, tx=tx, mgr=mgr)
            except DamagedError as exc:
                damaged.append((s, str(exc)))
                if i + 1 < len(steps):
                    _warn(
                        f"checkpoint step {s} in {root} is damaged ({exc}); "
                        f"falling back to step {steps[i + 1]}"
                    )
                continue
            return out | {"step": s, "damaged": [d for d, _ in damaged]}
    finally:
        if own:
            mgr.close()
    listed = "; ".join(f"step {s}: {why}" for s, why in damaged)
    if fall_back:
        raise UserError(
            f"no usable checkpoint in {root}: every finalized step is damaged ({listed}); delete the "
            "damaged step folders there to start the run afresh, or set run.workdir to a new folder"
        )
    raise UserError(
        f"checkpoint step {step} in {root} is damaged ({damaged[0][1]}); use another step folder or "
        "checkpoint (a training run's workdir falls back to its previous complete step by itself)"
    )


def _warn(line: str) -> None:
    if jax.process_index() == 0:
        print(f"warning: {line}", file=sys.stderr, flush=True)


def _restore_step(
    root: paths.PathLike,
    step: int,
    cfg: Config,
    *,
    mesh: Mesh | None,
    rules: sharding.Rules,
    tx: Any,
    mgr: ocp.CheckpointManager,
) -> dict[str, Any]:
    """One step, checked: another model or optimizer is a UserError; anything that keeps the step
    from being read back as written raises ``DamagedError`` with the reason."""
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
    folder = paths.as_path(root) / str(step)
    has_digest = (folder / "digest").exists()
    json_args = {"config": ocp.args.JsonRestore()}
    if has_digest:
        json_args["digest"] = ocp.args.JsonRestore()
    try:
        small = mgr.restore(step, args=ocp.args.Composite(**json_args))
        source = config_from_dict(small["config"])
    except Exception as exc:  # noqa: BLE001 - any failure to read a finalized step is damage
        raise DamagedError(_reason(exc)) from None
    mismatch = _shape_mismatch(cfg, source)
    if mismatch is not None:
        raise UserError(
            f"checkpoint {str(root)!r} step {step} does not match this model config ({mismatch}); set "
            f"the model.* keys to the checkpoint's ({_model_keys(source.model)}) or use another checkpoint"
        )
    stored_digest = small["digest"] if has_digest else None
    if stored_digest is not None and tx is not None:
        leaves, key = jax.tree_util.tree_leaves_with_path, jax.tree_util.keystr
        expected = {k: {key(p): [list(v.shape)] for p, v in leaves(_pure(t))} for k, t in targets.items()}
        for k in ("opt_state", "meta"):
            differs = _first_difference(stored_digest.get(k, {}), expected[k], 0)
            if differs is not None:
                raise UserError(
                    f"checkpoint {str(root)!r} step {step} has another optimizer state than this config's "
                    f"optimizer ({k}{differs} differs); keep the optim.* settings of the run that saved it "
                    "(e.g. optim.grad_clip on or off), or use a new run.workdir"
                )

    if mesh is not None:
        targets = sharding.attach(targets, sharding.state_shardings(targets, mesh, rules))
    args: dict[str, Any] = {k: ocp.args.StandardRestore(_pure(v)) for k, v in targets.items()}
    if tx is not None:
        args["data"] = ocp.args.JsonRestore()
    try:
        restored = mgr.restore(step, args=ocp.args.Composite(**args))
    except Exception as exc:  # noqa: BLE001 - the shapes were checked: this is damage
        raise DamagedError(_reason(exc)) from None
    out = {k: restored[k] for k in args}
    if stored_digest is not None:
        arrays = {k: out[k] for k in targets}
        got = digest(arrays)
        for k in arrays:
            differs = _first_difference(stored_digest.get(k, {}), got[k], 2)
            if differs is not None:
                raise DamagedError(f"{k}{differs} differs from what was saved")

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
    root, step = resolve(path)
    source = load_config(root / str(step))
    mismatch = _shape_mismatch(cfg, source)
    if mismatch is not None:
        raise UserError(
            f"train.init_from={path}: {mismatch}; set the model.* keys to the checkpoint's "
            f"({_model_keys(source.model)})"
        )
    return restore(root, step, cfg, mesh=mesh, rules=rules)["params"]


# --- a training run's checkpoints -----------------------------------------------------------


class Checkpointer:
    """A run's ``WORKDIR/checkpoints``: async saves of the train state and the data iterator's
    position, keeping the last ``checkpoint.keep``; restores onto any mesh, falling back past
    damaged steps. A save that fails (now, or in the background, found at the next save or at
    ``wait``/``close``) raises ``SaveError`` naming its step; the older steps stay as they were."""

    def __init__(self, workdir: paths.PathLike, cfg: Config):
        self.cfg = cfg
        self.root = paths.absolute(workdir) / "checkpoints"
        self.mgr = manager(self.root, keep=cfg.checkpoint.keep, async_save=cfg.checkpoint.async_save)
        self._writing: int | None = None  # the step whose save may still be in flight
        self._failed = False

    def latest_step(self) -> int | None:
        """The newest complete checkpoint (Orbax ignores a save cut short: the temporary folder of
        one on a local disk, a step folder without its commit file in a bucket)."""
        return self.mgr.latest_step()

    @contextlib.contextmanager
    def _saving(self, step: int | None) -> Iterator[None]:
        """Any failure inside is the failed save of the step in flight (or ``step``): SaveError."""
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - whatever the storage raised, the save failed
            failed = self._writing if self._writing is not None else step
            self._failed, self._writing = True, None
            older = [s for s in finalized_steps(self.root) if failed is None or s < failed]
            kept = f"the older checkpoints are intact (latest: step {older[0]})" if older else "none older"
            resume = f"resume from step {older[0]}" if older else "start again"
            raise SaveError(
                f"saving checkpoint step {failed} to {self.root} failed ({_reason(exc)}); {kept}; "
                f"free space or fix the storage, then run the same command again to {resume}"
            ) from None

    def save(self, state: Any, data_state: dict[str, Any]) -> None:
        """Start saving ``state`` (a ``TrainState``) at its step; returns once the arrays are off
        the devices."""
        stored = _stored(_pure({"params": state.params, "opt_state": state.opt_state}), self.cfg)
        meta = {"step": state.step, "tokens": state.tokens, "rng": state.rng}
        step = int(state.step)
        with self._saving(step):
            self.mgr.wait_until_finished()  # a failed previous save is reported as that step's
            self._writing = step
            self.mgr.save(
                step,
                args=ocp.args.Composite(
                    params=ocp.args.StandardSave(stored["params"]),
                    opt_state=ocp.args.StandardSave(stored["opt_state"]),
                    meta=ocp.args.StandardSave(meta),
                    data=ocp.args.JsonSave(data_state),
                    config=ocp.args.JsonSave(self.cfg.to_dict()),
                    digest=ocp.args.JsonSave(digest({**stored, "meta": meta})),
                ),
                force=True,
            )

    def restore(
        self, step: int, *, mesh: Mesh, rules: sharding.Rules, tx: Any
    ) -> tuple[Any, dict[str, Any], int]:
        """The train state at ``step`` laid out on ``mesh``, the data iterator's state, and the
        step restored: an older one when ``step`` is damaged (the damaged step folders are moved
        aside to ``damaged-<step>``, so the run can save those steps again)."""
        from gpt3_jax.training.state import TrainState

        try:
            r = restore(
                self.root, step, self.cfg, mesh=mesh, rules=rules, tx=tx, mgr=self.mgr, fall_back=True
            )
        except UserError as exc:
            raise UserError(f"{exc}; to start afresh, use a new run.workdir") from None
        if r["damaged"]:
            self._set_aside(r["damaged"])
        meta = r["meta"]
        state = TrainState(r["params"], r["opt_state"], meta["step"], meta["tokens"], meta["rng"])
        return state, r["data"], r["step"]

    def _set_aside(self, steps: list[int]) -> None:
        if jax.process_index() == 0:
            for s in steps:
                paths.move(self.root / str(s), self.root / f"damaged-{s}")
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("gpt3_jax: damaged checkpoints set aside")
        self.mgr.reload()

    def save_tokenizer(self, tokenizer: Tokenizer) -> None:
        """Write the run's tokenizer beside the steps, where ``sample`` looks for it (atomically)."""
        tokenizer.save(self.root)

    def wait(self) -> None:
        with self._saving(None):
            self.mgr.wait_until_finished()
        self._writing = None

    def close(self) -> None:
        """Wait for the save in flight and close. After a SaveError, only close (quietly: that
        failure was reported already)."""
        if self._failed:
            with contextlib.suppress(Exception):
                self.mgr.close()
            return
        self.wait()
        self.mgr.close()
