"""Training: the optimiser recipe, the setup shared with the planner, the sharded train state,
the jitted step and the loop."""

from gpt3_jax.training.optim import learning_rate, make_optimizer, ramp_micro_batches
from gpt3_jax.training.setup import Setup, abstract_state, setup, state_shardings
from gpt3_jax.training.state import TrainState, init_state
from gpt3_jax.training.step import cross_entropy, jit_eval_step, jit_train_step, make_train_step

__all__ = [
    "Setup",
    "TrainState",
    "abstract_state",
    "cross_entropy",
    "init_state",
    "jit_eval_step",
    "jit_train_step",
    "learning_rate",
    "make_optimizer",
    "make_train_step",
    "ramp_micro_batches",
    "setup",
    "state_shardings",
]
