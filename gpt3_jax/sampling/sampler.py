"""``Sampler``: generation for one model, on the host side of the decode loop.

It checks and left-pads the prompts, rounds the shapes up to buckets (prompt length and new-token
budget to powers of two: any ``max_new_tokens`` in a bucket reuses one program), compiles the
jitted loop of ``sampling.decode`` ahead of time (so compile seconds are reported apart from decode
speed; JAX caches the executable, a new ``Sampler`` of the same model does not recompile) and runs
it. With ``on_tokens`` set it streams: the loop runs in chunks of ``stream_chunk`` steps and the
host receives the tokens of each chunk as soon as they exist.

The sampler holds the model's own parameters (no copy): its extra device memory is the KV cache
and the program's temporaries.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from gpt3_jax.errors import UserError
from gpt3_jax.model import GPT
from gpt3_jax.sampling import decode
from gpt3_jax.sampling.decode import Vocab
from gpt3_jax.sampling.methods import Greedy, Method

MIN_BUCKET = 16
GREEDY = Greedy()


def bucket(n: int, cap: int | None = None) -> int:
    """``n`` rounded up to a power of two (at least ``MIN_BUCKET``), at most ``cap``."""
    size = max(MIN_BUCKET, 1 << max(n - 1, 0).bit_length())
    return size if cap is None else max(n, min(size, cap))


@dataclass
class Result:
    """Produced ids per row (end-of-text and what follows removed), their log-probabilities,
    and timings: compile seconds (about 0 when JAX had the program) and decode seconds (prefill
    included)."""

    ids: list[list[int]]
    logprobs: list[list[float]]
    prompt_tokens: int
    compile_seconds: float
    seconds: float

    @property
    def new_tokens(self) -> int:
        return sum(len(r) for r in self.ids)

    @property
    def tokens_per_sec(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


def _compile(fn, *args, **static) -> tuple:
    """``fn`` (a jitted function) compiled for these arguments, and the seconds it took."""
    t0 = time.perf_counter()
    compiled = fn.lower(*args, **static).compile()
    return compiled, time.perf_counter() - t0


class Sampler:
    """Generation for one model: ``Sampler(model).generate([[ids...], ...], max_new_tokens)``.

    With ``mesh`` (the one the model's parameters are sharded over) generation runs inside it and
    the cache is sharded by the model's rules like the parameters (heads over ``tensor``, batch
    over the data axes).
    """

    def __init__(
        self,
        model: GPT,
        *,
        eot_id: int | None = None,
        vocab_size: int | None = None,
        mesh: Mesh | None = None,
        stream_chunk: int = 1,
    ):
        self.cfg = model.cfg
        self.mesh = mesh
        self.graphdef, self.params = nnx.split(model)  # the model's arrays themselves
        self.vocab = Vocab(vocab_size or self.cfg.vocab_size, -1 if eot_id is None else int(eot_id))
        self.stream_chunk = stream_chunk

    def prepare(
        self, prompts: Sequence[Sequence[int]], max_new_tokens: int
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """Check and left-pad prompts → tokens [b, p], positions [b, p] (-1 on padding), and the
        new-token budget to use (the context may leave less room than asked)."""
        n_ctx = self.cfg.n_ctx
        if not prompts or any(len(p) == 0 for p in prompts):
            raise UserError("empty prompt; give at least one token of text")
        longest = max(len(p) for p in prompts)
        if longest >= n_ctx:
            raise UserError(
                f"prompt has {longest} tokens but the model's context is {n_ctx}; shorten the prompt "
                f"to at most {n_ctx - 1} tokens"
            )
        for p in prompts:
            bad = [t for t in p if not 0 <= t < self.vocab.size]
            if bad:
                raise UserError(f"token id {bad[0]} is outside the vocabulary [0, {self.vocab.size})")
        if max_new_tokens < 1:
            raise UserError(f"max new tokens must be >= 1, got {max_new_tokens}")
        p = bucket(longest, n_ctx)
        tokens = np.zeros((len(prompts), p), np.int32)
        positions = np.full((len(prompts), p), -1, np.int32)
        for r, q in enumerate(prompts):
            tokens[r, p - len(q) :] = q
            positions[r, p - len(q) :] = np.arange(len(q))
        return tokens, positions, min(max_new_tokens, n_ctx - longest)

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int = 64,
        *,
        method: Method = GREEDY,
        seed: int = 0,
        on_tokens: Callable[[np.ndarray], bool | None] | None = None,
    ) -> Result:
        """Generate up to ``max_new_tokens`` per prompt (fewer when the context runs out).

        ``on_tokens(tokens)`` (streaming) receives all rows' tokens so far, [b, i], after each
        chunk; returning True stops generation (e.g. a stop string was seen).
        """
        tokens, positions, max_new = self.prepare(prompts, max_new_tokens)
        n = bucket(max_new)
        static = dict(method=method, n=n, s_max=tokens.shape[1] + n, vocab=self.vocab)
        with jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext():
            args = (
                self.graphdef,
                self.params,
                jnp.asarray(tokens),
                jnp.asarray(positions),
                jax.random.key(seed),
            )
            if on_tokens is None:
                fn, compile_s = _compile(decode.generate, *args, jnp.int32(max_new), **static)
                t0 = time.perf_counter()
                state = jax.block_until_ready(fn(*args[1:], jnp.int32(max_new)))
            else:
                first, compile_s = _compile(decode.prefill, *args, **static)
                t0 = time.perf_counter()
                state = first(*args[1:])
                chunk = dict(method=method, vocab=self.vocab)
                rest, more = _compile(decode.resume, self.graphdef, self.params, state, jnp.int32(0), **chunk)
                compile_s, t0 = compile_s + more, t0 + more
                while True:  # host-side reads only: slicing on device would compile per length
                    i, done, produced = jax.device_get((state.i, state.done, state.tokens))
                    if on_tokens(produced[:, :i]) or i >= max_new or done.all():
                        break
                    state = rest(self.params, state, jnp.int32(min(i + self.stream_chunk, max_new)))
            seconds = time.perf_counter() - t0
            i, out, logp = jax.device_get((state.i, state.tokens, state.logprobs))
        out, logp = out[:, :i], logp[:, :i]
        ids, lps = [], []
        for r in range(out.shape[0]):
            row = out[r].tolist()
            eot = self.vocab.eot_id
            end = row.index(eot) if eot in row else len(row)
            ids.append(row[:end])
            lps.append(logp[r, :end].tolist())
        return Result(ids, lps, int(sum(len(q) for q in prompts)), compile_s, seconds)
