"""Log-likelihoods of tokens under the model: the one jitted scoring function (``score``, ``gpt3-jax
eval`` and the task evaluation in ``gpt3_jax.evaluation`` all call it), and token windows."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gpt3_jax.model import mask_vocab


@partial(jax.jit, static_argnames=("graphdef", "vocab_size"))
def token_logprobs(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    inputs: jax.Array,
    targets: jax.Array,
    vocab_size: int,
    positions: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Log-probabilities of targets, and the model's greedy (argmax) token in their place.

    inputs [b, t] at positions [b, t] (default 0..t-1; -1 marks padding, so left-padded rows are
    exact); targets [b, k], k ≤ t: the tokens that follow the LAST k inputs. Returns
    ``log p(targets[b, j] | inputs[b, :t-k+j+1])`` [b, k] float32 and the argmax ids [b, k] int32.

    Only the last k positions go through the softmax (evaluation scores short continuations at
    the end of left-padded rows). Logits of ids ≥ ``vocab_size`` (padding, or ids the tokenizer
    lacks) are masked, so the distribution is over the usable vocabulary.
    """
    model = nnx.merge(graphdef, params)
    logits, _ = model(inputs, positions)
    logits = mask_vocab(logits[:, inputs.shape[1] - targets.shape[1] :], vocab_size)  # (b, k, v)
    logp = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    return picked, jnp.argmax(logits, axis=-1).astype(jnp.int32)


def windows(ids: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split a token stream [n] into rows of ``seq_len`` next-token pairs, the last row padded.

    Returns inputs, targets [rows, seq_len] and a mask [rows, seq_len] of real targets; every token
    after the first is a target exactly once and sees up to ``seq_len`` tokens of context.
    """
    n_targets = len(ids) - 1
    rows = max(1, -(-n_targets // seq_len))
    inputs = np.zeros((rows, seq_len), np.int32)
    targets = np.zeros((rows, seq_len), np.int32)
    mask = np.zeros((rows, seq_len), bool)
    for r in range(rows):
        chunk = ids[r * seq_len : r * seq_len + seq_len + 1]
        k = len(chunk) - 1
        inputs[r, :k], targets[r, :k], mask[r, :k] = chunk[:-1], chunk[1:], True
    return inputs, targets, mask
