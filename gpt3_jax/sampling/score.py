"""Log-likelihood of token windows under the model: what ``score`` and ``gpt3-jax eval`` report."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gpt3_jax.model import mask_vocab


@partial(jax.jit, static_argnames=("graphdef", "vocab_size"))
def token_logprobs(
    graphdef: nnx.GraphDef, params: nnx.State, inputs: jax.Array, targets: jax.Array, vocab_size: int
) -> jax.Array:
    """log p(targets[b, t] | inputs[b, :t+1]) for inputs/targets [b, t] → [b, t] float32.

    Logits of ids ≥ ``vocab_size`` (padding, or ids the tokenizer lacks) are masked, so the
    distribution is over the usable vocabulary.
    """
    model = nnx.merge(graphdef, params)
    logits, _ = model(inputs)
    logits = mask_vocab(logits, vocab_size)  # (b, t, v)
    logp = jax.nn.log_softmax(logits, axis=-1)
    return jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]


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
