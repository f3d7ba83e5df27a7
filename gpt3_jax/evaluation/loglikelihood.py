"""Log-likelihoods of continuations given contexts, many at once: the engine of task evaluation.

A ``Request`` is a context and a continuation, both token ids. ``Scorer`` returns, for each, the
summed log-probability of the continuation's tokens and whether every one of them is the model's
greedy (argmax) choice, from one forward pass, as lm-evaluation-harness's ``loglikelihood``:

- the row is ``(context + continuation)[-(n_ctx + 1):][:-1]``: a context too long for the model
  is cut from the left, as the harness does;
- rows are LEFT-padded (positions -1 on padding, which the model never attends to, so a padded
  row scores exactly as the row alone) into length buckets (powers of two, at most n_ctx), so the
  continuations all end at the last column and only the last k columns (k the bucket of the
  longest continuation) go through the softmax;
- every batch of a bucket has one shape, a multiple of the mesh's data-parallel size: the jitted
  ``sampling.score.token_logprobs`` compiles once per bucket, never per example.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from tqdm import tqdm

from gpt3_jax import sharding
from gpt3_jax.errors import UserError
from gpt3_jax.model import GPT
from gpt3_jax.sampling import LanguageModel
from gpt3_jax.sampling.sampler import bucket
from gpt3_jax.sampling.score import token_logprobs


@dataclass(frozen=True)
class Request:
    """Token ids: a non-empty context and the continuation to score after it."""

    context: tuple[int, ...]
    continuation: tuple[int, ...]


@dataclass(frozen=True)
class Scored:
    """A request's result: ``loglikelihood`` (sum over the continuation's tokens, nats),
    ``greedy`` (every continuation token is the argmax at its position) and ``argmax`` (the
    model's top token at each continuation position, given the true tokens before it)."""

    loglikelihood: float
    greedy: bool
    argmax: tuple[int, ...]


def encode_request(tokenizer, context: str, continuation: str) -> Request:
    """Strings → a Request, as lm-evaluation-harness splits them: the continuation's ids are those
    of ``encode(context + continuation)`` after the first ``len(encode(context))``; an empty
    context is end-of-text alone."""
    if not context:
        return Request((tokenizer.eot_id,), tuple(tokenizer.encode(continuation)))
    context_ids = tokenizer.encode(context)
    whole = tokenizer.encode(context + continuation)
    return Request(tuple(context_ids), tuple(whole[len(context_ids) :]))


def _to_host(a: jax.Array) -> np.ndarray:
    """The whole array on this host; with several processes the batch is sharded over all of them,
    so each gathers the rest (every process runs the same batches, so all take part)."""
    if a.is_fully_addressable:
        return np.asarray(jax.device_get(a))
    return np.asarray(multihost_utils.process_allgather(a, tiled=True))


def _pow2_floor(n: int) -> int:
    return 1 << (max(n, 1).bit_length() - 1)


class Scorer:
    """Scores requests under ``model`` (its parameters as they are, on ``mesh`` if given).

    ``batch_size`` rows per batch at most, and at most ``max_batch_tokens`` tokens (rows × bucket
    length), so long buckets take fewer rows; ``vocab_size`` (default: the model's) masks
    the padded rows of the embedding past it.
    """

    def __init__(
        self,
        model: GPT,
        *,
        vocab_size: int | None = None,
        mesh: Mesh | None = None,
        batch_size: int = 16,
        max_batch_tokens: int = 16384,
    ):
        if batch_size < 1 or max_batch_tokens < 1:
            raise UserError("batch size and max batch tokens must be >= 1")
        self.cfg = model.cfg
        self.mesh = mesh
        self.graphdef, self.params = nnx.split(model)
        self.vocab_size = vocab_size or self.cfg.vocab_size
        self.batch_size, self.max_batch_tokens = batch_size, max_batch_tokens
        self.data_parallel = 1 if mesh is None else sharding.data_parallel_size(mesh, model.rules)

    @classmethod
    def from_language_model(cls, lm: LanguageModel, **kwargs: Any) -> Scorer:
        """The scorer of a loaded model (``sampling.load``): its model, vocabulary and mesh."""
        return cls(lm.model, vocab_size=lm.vocab_size, mesh=lm.mesh, **kwargs)

    def _rows(self, length: int, count: int) -> int:
        """Rows per batch for a bucket of ``length`` holding ``count`` requests: a power of two
        (fewer shapes), no more than the bucket needs, a multiple of the data-parallel size."""
        rows = _pow2_floor(min(self.batch_size, self.max_batch_tokens // length))
        rows = min(rows, 1 << (count - 1).bit_length())
        return -(-rows // self.data_parallel) * self.data_parallel

    def _row(self, request: Request) -> tuple[list[int], list[int]]:
        """The request's input ids (cut from the left to n_ctx) and its target ids, the continuation."""
        n_ctx, continuation = self.cfg.n_ctx, list(request.continuation)
        if not request.context or not continuation:
            raise UserError("a request needs a non-empty context and continuation (in tokens)")
        if len(continuation) > n_ctx:
            raise UserError(
                f"a continuation of {len(continuation)} tokens does not fit the model's context of {n_ctx}"
            )
        whole = [*request.context, *continuation][-(n_ctx + 1) :]
        bad = [t for t in whole if not 0 <= t < self.vocab_size]
        if bad:
            raise UserError(f"token id {bad[0]} is outside the vocabulary [0, {self.vocab_size})")
        return whole[:-1], continuation

    def __call__(
        self, requests: Sequence[Request], *, progress: bool = False, desc: str = "score"
    ) -> list[Scored]:
        """Score every request; results in the order given. ``progress`` shows a bar on stderr."""
        rows = [self._row(r) for r in requests]
        buckets: dict[int, list[int]] = {}
        for i, (inputs, _) in enumerate(rows):
            buckets.setdefault(bucket(len(inputs), self.cfg.n_ctx), []).append(i)
        out: list[Scored] = [None] * len(requests)  # type: ignore[list-item]
        mesh = jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext()
        bar = tqdm(total=len(requests), desc=desc, unit="req", file=sys.stderr, disable=not progress)
        with mesh, bar:
            for t, members in sorted(buckets.items(), reverse=True):  # longest first: memory errors early
                k = min(t, bucket(max(len(rows[i][1]) for i in members)))
                b = self._rows(t, len(members))
                for start in range(0, len(members), b):
                    batch = members[start : start + b]
                    for i, scored in zip(batch, self._batch([rows[i] for i in batch], b, t, k), strict=True):
                        out[i] = scored
                    bar.update(len(batch))
        return out

    def _batch(self, rows: list[tuple[list[int], list[int]]], b: int, t: int, k: int) -> list[Scored]:
        """One batch: ``rows`` left-padded into [b, t] (rows past len(rows) all padding), targets
        right-aligned in [b, k]."""
        tokens = np.zeros((b, t), np.int32)
        positions = np.full((b, t), -1, np.int32)
        targets = np.zeros((b, k), np.int32)
        for r, (inputs, continuation) in enumerate(rows):
            tokens[r, t - len(inputs) :] = inputs
            positions[r, t - len(inputs) :] = np.arange(len(inputs))
            targets[r, k - len(continuation) :] = continuation
        scores = token_logprobs(self.graphdef, self.params, tokens, targets, self.vocab_size, positions)
        logp, top = (_to_host(a) for a in scores)
        out = []
        for r, (_, continuation) in enumerate(rows):
            span = slice(k - len(continuation), k)
            argmax = top[r, span].tolist()
            out.append(Scored(float(logp[r, span].sum()), argmax == continuation, tuple(argmax)))
        return out
