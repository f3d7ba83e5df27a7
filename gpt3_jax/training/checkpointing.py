"""Save and restore a run: the TrainState plus the data iterator's position, via Orbax.

Layout (``gpt3_jax.checkpoint``): ``WORKDIR/checkpoints/<step>/{params, config, opt_state, meta,
data}`` and ``WORKDIR/checkpoints/tokenizer.model`` (or ``tokenizer.json``, a Hugging Face
tokenizer). ``params`` is the NNX state's pure dict, so ``sample``/``eval``/``convert`` read a
training checkpoint like any other. Restoring takes targets that carry the *current* mesh's
shardings, so a run saved on one mesh continues on another.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import orbax.checkpoint as ocp
from flax import nnx

from gpt3_jax import checkpoint
from gpt3_jax.config import Config
from gpt3_jax.errors import UserError
from gpt3_jax.training.state import TrainState, model_graphdef_and_abstract, with_shardings

if TYPE_CHECKING:
    from gpt3_jax.data.tokenizer import Tokenizer


def _meta(state: TrainState) -> dict[str, jax.Array]:
    return {"step": state.step, "tokens": state.tokens, "rng": state.rng}


class Checkpointer:
    """The run's CheckpointManager: async saves, keep the last ``checkpoint.keep``."""

    def __init__(self, workdir: str | Path, cfg: Config):
        self.root = Path(workdir).absolute() / "checkpoints"
        self.mgr = checkpoint.manager(
            self.root, keep=cfg.checkpoint.keep, async_save=cfg.checkpoint.async_save
        )

    def latest_step(self) -> int | None:
        """The newest complete checkpoint (Orbax ignores the temp folder of a save cut short)."""
        return self.mgr.latest_step()

    def save(self, state: TrainState, data_state: dict[str, Any], cfg: Config) -> None:
        """Start saving ``state`` at its step; returns once the arrays are copied off the devices."""
        step = int(state.step)
        self.mgr.save(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardSave(state.params.to_pure_dict()),
                opt_state=ocp.args.StandardSave(state.opt_state),
                meta=ocp.args.StandardSave(_meta(state)),
                data=ocp.args.JsonSave(data_state),
                config=ocp.args.JsonSave(cfg.to_dict()),
            ),
            force=True,
        )

    def restore(
        self, step: int, abstract: TrainState, shardings: TrainState
    ) -> tuple[TrainState, dict[str, Any]]:
        """The state at ``step`` laid out by ``shardings`` (any mesh), and the data iterator state."""
        target = with_shardings(abstract, shardings)
        params = target.params
        try:
            restored = self.mgr.restore(
                step,
                args=ocp.args.Composite(
                    params=ocp.args.StandardRestore(params.to_pure_dict()),
                    opt_state=ocp.args.StandardRestore(target.opt_state),
                    meta=ocp.args.StandardRestore(_meta(target)),
                    data=ocp.args.JsonRestore(),
                ),
            )
        except (ValueError, KeyError) as exc:
            raise UserError(
                f"checkpoint {self.root}/{step} does not match this config's model "
                f"({str(exc).splitlines()[0]}); resume with the model settings it was saved with, "
                "or use a new run.workdir"
            ) from None
        nnx.replace_by_pure_dict(params, restored.params)
        meta = restored.meta
        state = TrainState(params, restored.opt_state, meta["step"], meta["tokens"], meta["rng"])
        return state, restored.data

    def save_tokenizer(self, tokenizer: Tokenizer) -> None:
        """Write the run's tokenizer beside the steps, where ``sample`` looks for it (atomically)."""
        tokenizer.save(self.root)

    def wait(self) -> None:
        self.mgr.wait_until_finished()

    def close(self) -> None:
        self.mgr.wait_until_finished()
        self.mgr.close()


def load_init_params(path: str | Path, cfg: Config, param_shardings: Any) -> nnx.State:
    """Fine-tuning: parameters only, from a training run or a converted checkpoint, laid out for
    this run. A model of another shape is a UserError naming the first differing parameter."""
    root, step = checkpoint.resolve(path)
    source = checkpoint.load_config(root / str(step))
    _, mine = model_graphdef_and_abstract(cfg)
    _, theirs = model_graphdef_and_abstract(source)
    shapes = {
        jax.tree_util.keystr(p): v.shape for p, v in jax.tree_util.tree_leaves_with_path(mine.to_pure_dict())
    }
    m = source.model
    for p, v in jax.tree_util.tree_leaves_with_path(theirs.to_pure_dict()):
        name = jax.tree_util.keystr(p)
        if shapes.pop(name, None) != v.shape:
            raise UserError(
                f"train.init_from={path}: parameter {name} has shape {v.shape} there but "
                f"{mine_shape(mine, p)} in this config; set the model.* keys to the checkpoint's "
                f"(n_layer={m.n_layer}, d_model={m.d_model}, n_head={m.n_head}, n_ctx={m.n_ctx}, "
                f"vocab_size={m.vocab_size}, attention_pattern={list(m.attention_pattern)})"
            )
    if shapes:
        raise UserError(f"train.init_from={path}: the checkpoint lacks parameter {next(iter(shapes))}")
    return checkpoint.restore_params(root, step, with_shardings(mine, param_shardings))


def mine_shape(state: nnx.State, path: tuple[Any, ...]) -> Any:
    """The shape at ``path`` of a pure-dict view of ``state``, or 'nothing' when absent."""
    node: Any = state.to_pure_dict()
    for key in path:
        k = getattr(key, "key", key)
        if not isinstance(node, dict) or k not in node:
            return "nothing"
        node = node[k]
    return node.shape
