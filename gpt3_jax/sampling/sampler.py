"""The generation loop: prefill in one pass, then a ``lax.while_loop`` of decode steps, jitted.

``Sampler.generate`` compiles one function per shape bucket (prompt length and new-token budget
rounded up to powers of two) and sampling method, and runs the whole generation in it. With
``on_tokens`` set it streams instead: the same loop body runs in chunks of ``stream_chunk`` steps
(one more compile, reused for every chunk), and the host receives each chunk as it comes.

Prompts of different lengths are left-padded to the bucket; each row keeps its own positions
(see ``cache``). Rows stop at the end-of-text id; finished rows emit ``eot_id`` (or 0) after it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from gpt3_jax.errors import UserError
from gpt3_jax.model import GPT
from gpt3_jax.sampling import decode
from gpt3_jax.sampling.cache import KVCache
from gpt3_jax.sampling.methods import Greedy, Method

MIN_BUCKET = 16
GREEDY = Greedy()
_COMPILED: dict = {}  # (function, model, shapes, statics) → compiled executable
_MAX_COMPILED = 32


def bucket(n: int, cap: int | None = None) -> int:
    """``n`` rounded up to a power of two (at least ``MIN_BUCKET``), at most ``cap``."""
    size = max(MIN_BUCKET, 1 << max(n - 1, 0).bit_length())
    return size if cap is None else max(n, min(size, cap))


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class DecodeState:
    """Everything the decode loop carries. b batch, n new-token budget (bucketed)."""

    i: jax.Array  # () how many tokens each row has produced
    token: jax.Array  # [b] the last token produced, fed at the next step
    done: jax.Array  # [b] bool, row has produced end-of-text
    tokens: jax.Array  # [b, n] produced tokens
    logprobs: jax.Array  # [b, n] model log-probabilities of the produced tokens
    pad: jax.Array  # [b] left padding of each row
    key: jax.Array  # base PRNG key; step i uses fold_in(key, i)
    cache: KVCache
    p: int = field(metadata=dict(static=True))  # prompt slot count: token i is fed at time p - 1 + i


@dataclass(frozen=True)
class Vocab:
    """The ids generation may produce, ``[0, size)`` (the tokenizer's, which may be smaller than the
    model's), and the end-of-text id that ends a row (-1: none)."""

    size: int
    eot_id: int = -1


def _pick(logits: jax.Array, key: jax.Array, i: jax.Array, method: Method, vocab: Vocab):
    """Choose the next token of every row: logits [b, v] → tokens [b], log-probs [b]."""
    logits = decode.mask_vocab(logits, vocab.size)
    token = method(logits, jax.random.fold_in(key, i))
    logprob = jnp.take_along_axis(jax.nn.log_softmax(logits, -1), token[:, None], -1)[:, 0]
    return token, logprob


def _record(state: DecodeState, token, logprob, vocab: Vocab) -> DecodeState:
    token = jnp.where(state.done, max(vocab.eot_id, 0), token)
    done = state.done | (token == vocab.eot_id)
    tokens = jax.lax.dynamic_update_slice(state.tokens, token[:, None], (0, state.i))
    logprobs = jax.lax.dynamic_update_slice(state.logprobs, logprob[:, None], (0, state.i))
    return DecodeState(state.i + 1, token, done, tokens, logprobs, state.pad, state.key, state.cache, state.p)


def start(
    model, groups, tokens, pad, key, *, method: Method, n: int, s_max: int, vocab: Vocab
) -> DecodeState:
    """Prefill the left-padded prompts tokens [b, p] and produce each row's first token."""
    b, p = tokens.shape
    logits, cache = decode.prefill(model, tokens, pad, s_max, groups=groups)
    empty = DecodeState(
        i=jnp.zeros((), jnp.int32),
        token=jnp.zeros((b,), jnp.int32),
        done=jnp.zeros((b,), bool),
        tokens=jnp.zeros((b, n), jnp.int32),
        logprobs=jnp.zeros((b, n), jnp.float32),
        pad=pad,
        key=key,
        cache=cache,
        p=p,
    )
    return _record(empty, *_pick(logits, key, empty.i, method, vocab), vocab)


def run(model, groups, state: DecodeState, stop_at, *, method: Method, vocab: Vocab) -> DecodeState:
    """Decode until ``stop_at`` tokens per row (at most the budget) or every row is done."""
    limit = jnp.minimum(stop_at, state.tokens.shape[1])

    def cond(s: DecodeState) -> jax.Array:
        return (s.i < limit) & ~jnp.all(s.done)

    def body(s: DecodeState) -> DecodeState:
        t = s.p - 1 + s.i
        logits, cache = decode.step(model, s.token, t, s.pad, s.cache, groups)
        s = DecodeState(s.i, s.token, s.done, s.tokens, s.logprobs, s.pad, s.key, cache, s.p)
        return _record(s, *_pick(logits, s.key, s.i, method, vocab), vocab)

    return jax.lax.while_loop(cond, body, state)


@partial(jax.jit, static_argnames=("graphdef", "method", "n", "s_max", "vocab"))
def _generate(graphdef, params, tokens, pad, key, max_new, *, method, n, s_max, vocab):
    model, groups = nnx.merge(graphdef, params[0]), params[1]
    state = start(model, groups, tokens, pad, key, method=method, n=n, s_max=s_max, vocab=vocab)
    return run(model, groups, state, max_new, method=method, vocab=vocab)


@partial(jax.jit, static_argnames=("graphdef", "method", "n", "s_max", "vocab"))
def _start(graphdef, params, tokens, pad, key, *, method, n, s_max, vocab):
    model, groups = nnx.merge(graphdef, params[0]), params[1]
    return start(model, groups, tokens, pad, key, method=method, n=n, s_max=s_max, vocab=vocab)


@partial(jax.jit, static_argnames=("graphdef", "method", "vocab"), donate_argnames=("state",))
def _run(graphdef, params, state, stop_at, *, method, vocab):
    return run(nnx.merge(graphdef, params[0]), params[1], state, stop_at, method=method, vocab=vocab)


@dataclass
class Result:
    """Produced ids per row (end-of-text and what follows removed), their log-probabilities,
    and timings: compile seconds (0 when cached) and decode seconds (prefill included)."""

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


class Sampler:
    """Generation for one model: ``Sampler(model).generate([[ids...], ...], max_new_tokens)``.

    Inside ``jax.set_mesh(mesh)`` with a sharded model, the cache is sharded by the same rules.
    The sampler keeps its own copy of the layer weights split per layer group (``decode.unstack``:
    the decode loop then reads them in place), so it holds about one more copy of those weights.
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
        # (model state, per-group weights): the decode loop reads the split copy (``decode.unstack``).
        self.graphdef, state = nnx.split(model)
        self.params = (state, decode.unstack(model))
        self.vocab = Vocab(vocab_size or self.cfg.vocab_size, -1 if eot_id is None else int(eot_id))
        self.stream_chunk = stream_chunk

    def _compile(self, name: str, fn, *args, **static) -> tuple:
        """AOT-compile ``fn`` once per model, argument shapes and statics → (compiled, seconds).

        Compiled ahead of time so that compile seconds are reported apart from decode speed; the
        cache is shared by all samplers (a notebook re-creating one does not recompile).
        """
        leaves, treedef = jax.tree.flatten((self.params, args))
        shapes = tuple((a.shape, a.dtype, getattr(a, "sharding", None)) for a in leaves)
        key = (name, self.graphdef, str(treedef), shapes, tuple(sorted(static.items())))
        if key in _COMPILED:
            return _COMPILED[key], 0.0
        t0 = time.perf_counter()
        compiled = fn.lower(self.graphdef, self.params, *args, **static).compile()
        if len(_COMPILED) >= _MAX_COMPILED:
            _COMPILED.pop(next(iter(_COMPILED)))  # the oldest
        _COMPILED[key] = compiled
        return compiled, time.perf_counter() - t0

    def prepare(
        self, prompts: Sequence[Sequence[int]], max_new_tokens: int
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """Check and left-pad prompts → tokens [b, p], pad [b], and the new-token budget to use."""
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
        pad = np.array([p - len(q) for q in prompts], np.int32)
        for r, q in enumerate(prompts):
            tokens[r, pad[r] :] = q
        return tokens, pad, min(max_new_tokens, n_ctx - longest)

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
        tokens, pad, max_new = self.prepare(prompts, max_new_tokens)
        with jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext():
            return self._generate(prompts, tokens, pad, max_new, method, seed, on_tokens)

    def _generate(self, prompts, tokens, pad, max_new, method, seed, on_tokens) -> Result:
        n = bucket(max_new)
        static = dict(method=method, n=n, s_max=tokens.shape[1] + n, vocab=self.vocab)
        args = (jnp.asarray(tokens), jnp.asarray(pad), jax.random.key(seed))
        if on_tokens is None:
            fn, compile_s = self._compile("generate", _generate, *args, jnp.int32(max_new), **static)
            t0 = time.perf_counter()
            state = jax.block_until_ready(fn(self.params, *args, jnp.int32(max_new)))
        else:
            first, compile_s = self._compile("start", _start, *args, **static)
            t0 = time.perf_counter()
            state = first(self.params, *args)
            rest, more = self._compile("run", _run, state, jnp.int32(0), method=method, vocab=self.vocab)
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
