"""Checks ``train`` makes before it writes anything, so that a bad run leaves the workdir (and
every other folder) as it found them.

``setup`` has already checked the config against the devices (mesh, batch); this adds what needs
the filesystem: the workdir is a run's and not a checkpoint folder, a checkpoint to resume from
or to start from (``train.init_from``) has this config's parameter shapes, and the data inputs and
tokenizer are usable (``data.check_training_data``).
"""

from __future__ import annotations

import os

import jax

from gpt3_jax import checkpoint, paths
from gpt3_jax.config import Config, ModelConfig
from gpt3_jax.errors import UserError


def param_shapes(model: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter's name and shape in the stored (stacked) layout, from abstract shapes."""
    from gpt3_jax.model import abstract_gpt

    stored = abstract_gpt(checkpoint.stored_config(Config(model=model)).model)[1].to_pure_dict()
    return {jax.tree_util.keystr(p): v.shape for p, v in jax.tree_util.tree_leaves_with_path(stored)}


def shape_mismatch(mine: ModelConfig, theirs: ModelConfig) -> str | None:
    """The first parameter whose shape differs between two models, as words; None if none does."""
    a, b = param_shapes(mine), param_shapes(theirs)
    for name in sorted(set(a) | set(b)):
        if a.get(name) != b.get(name):
            return (
                f"parameter {name} has shape {b.get(name, 'nothing')} there but {a.get(name, 'nothing')} here"
            )
    return None


def _describe(m: ModelConfig) -> str:
    return (
        f"n_layer={m.n_layer}, d_model={m.d_model}, n_head={m.n_head}, n_ctx={m.n_ctx}, "
        f"vocab_size={m.vocab_size}, attention_pattern={list(m.attention_pattern)}"
    )


def check_workdir(workdir: paths.Path) -> None:
    """``run.workdir`` must be a run's folder (or not exist yet): not a file, and not a checkpoint
    folder, such as ``convert from-hf`` output or a run's ``checkpoints/``, which training there
    would fill with a run of its own."""
    import orbax.checkpoint as ocp

    if not workdir.exists():
        _check_creatable(workdir)
        return
    if not workdir.is_dir():
        raise UserError(f"run.workdir={workdir} is a file; set run.workdir to a folder")
    if not (workdir / "checkpoints").exists() and ocp.utils.checkpoint_steps(workdir):
        raise UserError(
            f"run.workdir={workdir} is a checkpoint folder, not a run's workdir; to start from its "
            f"weights set train.init_from={workdir} and a new run.workdir"
        )


def _check_creatable(workdir: paths.Path) -> None:
    """A local ``run.workdir`` that does not exist yet must be creatable: its nearest existing
    parent a folder this process may write in (checked, not created: nothing is written before
    every check has passed). A bucket path is left to the bucket."""
    if paths.is_remote(workdir):
        return
    parent = paths.absolute(workdir).parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(
            f"run.workdir={workdir} cannot be created: {parent} is a file; set run.workdir to a folder"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(
            f"run.workdir={workdir} cannot be created: {parent} is not writable; set run.workdir to a "
            "folder you can write in"
        )


def check_checkpoints(cfg: Config, workdir: paths.Path) -> None:
    """The checkpoint a run resumes from (its workdir's latest) or starts from (``train.init_from``)
    must have this config's parameter shapes."""
    import orbax.checkpoint as ocp

    root = workdir / "checkpoints"
    if root.is_dir() and ocp.utils.checkpoint_steps(root):
        stored = checkpoint.load_config(root).model
        if (why := shape_mismatch(cfg.model, stored)) is not None:
            raise UserError(
                f"run.workdir={workdir} holds a run of another model ({why}); keep the run's model.* "
                f"keys ({_describe(stored)}) to resume it, or use a new run.workdir"
            )
        return
    if cfg.train.init_from:
        source = checkpoint.load_config(cfg.train.init_from).model
        if (why := shape_mismatch(cfg.model, source)) is not None:
            raise UserError(
                f"train.init_from={cfg.train.init_from}: {why}; set the model.* keys to the "
                f"checkpoint's ({_describe(source)})"
            )


def preflight(cfg: Config, workdir: paths.PathLike) -> None:
    """Everything ``train`` can check before writing: a UserError names the first problem."""
    from gpt3_jax.data.cache import check_training_data

    workdir = paths.as_path(workdir)
    check_workdir(workdir)
    check_checkpoints(cfg, workdir)
    check_training_data(cfg)
