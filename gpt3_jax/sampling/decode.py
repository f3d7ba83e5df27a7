"""The decode loop: prefill, then a ``lax.while_loop`` of one-token steps, and the choice of token.

Every forward pass here is a call of the model itself with its KV cache (``GPT.__call__`` with
``cache=``): the prompt in one call, then one token per step. This module only keeps the loop's
state and picks the tokens.

Prompts of different lengths are left-padded to one length ``p``; padding has position -1 (never
attended to) and row ``r``'s tokens have positions ``0 … len_r - 1``, so each row's logits equal
those of its unpadded prompt. Rows stop at the end-of-text id; finished rows emit ``eot_id``
(or 0) after it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from gpt3_jax.model import mask_vocab
from gpt3_jax.sampling.methods import Method


@dataclass(frozen=True)
class Vocab:
    """The ids generation may produce, ``[0, size)`` (the tokenizer's, which may be smaller than the
    model's), and the end-of-text id that ends a row (-1: none)."""

    size: int
    eot_id: int = -1


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class DecodeState:
    """Everything the decode loop carries. b batch, n new-token budget (bucketed)."""

    i: jax.Array  # () how many tokens each row has produced
    token: jax.Array  # [b] the last token produced, fed at the next step
    pos: jax.Array  # [b] the position ``token`` is fed at
    done: jax.Array  # [b] bool, row has produced end-of-text
    tokens: jax.Array  # [b, n] produced tokens
    logprobs: jax.Array  # [b, n] model log-probabilities of the produced tokens
    key: jax.Array  # base PRNG key; step i uses fold_in(key, i)
    cache: Any  # the model's KV cache


def _record(state: DecodeState, logits: jax.Array, method: Method, vocab: Vocab, cache: Any) -> DecodeState:
    """Choose every row's next token from logits [b, v] and append it (after end-of-text: eot)."""
    logits = mask_vocab(logits, vocab.size)
    token = method(logits, jax.random.fold_in(state.key, state.i))
    logprob = jnp.take_along_axis(jax.nn.log_softmax(logits, -1), token[:, None], -1)[:, 0]
    token = jnp.where(state.done, max(vocab.eot_id, 0), token)
    done = state.done | (token == vocab.eot_id)
    tokens = jax.lax.dynamic_update_slice(state.tokens, token[:, None], (0, state.i))
    logprobs = jax.lax.dynamic_update_slice(state.logprobs, logprob[:, None], (0, state.i))
    return DecodeState(state.i + 1, token, state.pos + 1, done, tokens, logprobs, state.key, cache)


def start(model, tokens, positions, key, *, method: Method, n: int, s_max: int, vocab: Vocab) -> DecodeState:
    """Prefill the left-padded prompts tokens [b, p] (positions [b, p], -1 on padding) into a new
    cache of ``s_max`` slot times and produce each row's first token."""
    b, _ = tokens.shape
    logits, cache = model(tokens, positions, cache=model.init_cache(b, s_max), last_only=True)
    empty = DecodeState(
        i=jnp.zeros((), jnp.int32),
        token=jnp.zeros((b,), jnp.int32),
        pos=positions[:, -1],
        done=jnp.zeros((b,), bool),
        tokens=jnp.zeros((b, n), jnp.int32),
        logprobs=jnp.zeros((b, n), jnp.float32),
        key=key,
        cache=cache,
    )
    return _record(empty, logits[:, 0], method, vocab, cache)


def run(model, state: DecodeState, stop_at: jax.Array, *, method: Method, vocab: Vocab) -> DecodeState:
    """Decode until ``stop_at`` tokens per row (at most the budget) or every row is done."""
    limit = jnp.minimum(stop_at, state.tokens.shape[1])

    def cond(s: DecodeState) -> jax.Array:
        return (s.i < limit) & ~jnp.all(s.done)

    def body(s: DecodeState) -> DecodeState:
        logits, cache = model(s.token[:, None], s.pos[:, None], cache=s.cache, last_only=True)
        return _record(s, logits[:, 0], method, vocab, cache)

    return jax.lax.while_loop(cond, body, state)


@partial(jax.jit, static_argnames=("graphdef", "method", "n", "s_max", "vocab"))
def generate(graphdef, params, tokens, positions, key, max_new, *, method, n, s_max, vocab) -> DecodeState:
    """The whole generation in one program: ``start``, then ``run`` up to ``max_new`` tokens."""
    model = nnx.merge(graphdef, params)
    state = start(model, tokens, positions, key, method=method, n=n, s_max=s_max, vocab=vocab)
    return run(model, state, max_new, method=method, vocab=vocab)


@partial(jax.jit, static_argnames=("graphdef", "method", "n", "s_max", "vocab"))
def prefill(graphdef, params, tokens, positions, key, *, method, n, s_max, vocab) -> DecodeState:
    """``start`` alone (streaming: the loop then runs in chunks with ``resume``)."""
    return start(
        nnx.merge(graphdef, params), tokens, positions, key, method=method, n=n, s_max=s_max, vocab=vocab
    )


@partial(jax.jit, static_argnames=("graphdef", "method", "vocab"), donate_argnames=("state",))
def resume(graphdef, params, state, stop_at, *, method, vocab) -> DecodeState:
    """``run`` on a state from ``prefill`` or an earlier ``resume`` (donated: updated in place)."""
    return run(nnx.merge(graphdef, params), state, stop_at, method=method, vocab=vocab)
