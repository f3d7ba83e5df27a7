"""The Python API that notebooks and the CLI use: load a checkpoint, generate, score.

lm = load("runs/tiny")                        # any mesh: load("runs/x", mesh=make_mesh(...))
lm.generate("Once upon a time", max_new_tokens=50, temperature=0.8, top_p=0.95, seed=1)
lm.score("The quick brown fox").perplexity
few_shot_prompt("Translate English to French.", [("cheese", "fromage")], "house")
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from gpt3_jax.config import Config
from gpt3_jax.errors import UserError
from gpt3_jax.model import GPT
from gpt3_jax.sampling.methods import Method, make_method
from gpt3_jax.sampling.sampler import Result, Sampler
from gpt3_jax.sampling.score import token_logprobs, windows


@dataclass
class Completion:
    """One generated continuation: ``text`` (stop strings cut off), its ``ids`` (end-of-text and
    anything after excluded) and, on request, the model log-probability of each id."""

    text: str
    ids: list[int]
    logprobs: list[float] | None = None


@dataclass
class Generation(Sequence[Completion]):
    """What ``LanguageModel.generate`` returns: the completions (one per row, prompt-major; it is a
    sequence of them, so ``[c] = lm.generate(...)`` works) and the run's ids and timings."""

    completions: list[Completion]
    result: Result

    def __getitem__(self, i):  # type: ignore[override]
        return self.completions[i]

    def __len__(self) -> int:
        return len(self.completions)

    @property
    def tokens_per_sec(self) -> float:
        return self.result.tokens_per_sec

    @property
    def compile_seconds(self) -> float:
        return self.result.compile_seconds

    @property
    def seconds(self) -> float:
        return self.result.seconds


@dataclass
class Score:
    """Log-likelihood of a text's tokens, each given all tokens before it (and end-of-text first)."""

    log_likelihood: float
    tokens: int

    @property
    def loss(self) -> float:
        """Mean negative log-likelihood per token (nats)."""
        return -self.log_likelihood / max(self.tokens, 1)

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)


def few_shot_prompt(
    task_description: str,
    examples: Sequence[tuple[str, str]],
    query: str,
    *,
    input_prefix: str = "Q: ",
    output_prefix: str = "A: ",
    separator: str = "\n\n",
) -> str:
    """A GPT-3 style priming prompt: the task, K solved examples, then the query left open.

    >>> few_shot_prompt("Add the numbers.", [("2 + 2", "4")], "3 + 5")
    'Add the numbers.\\n\\nQ: 2 + 2\\nA: 4\\n\\nQ: 3 + 5\\nA:'
    """
    parts = [task_description.strip()] if task_description.strip() else []
    parts += [f"{input_prefix}{q}\n{output_prefix}{a}" for q, a in examples]
    parts.append(f"{input_prefix}{query}\n{output_prefix.rstrip()}")
    return separator.join(parts)


def _cut(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Text up to the first stop string, and whether one was found."""
    hits = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return (text[: min(hits)], True) if hits else (text, False)


class LanguageModel:
    """A loaded model with its tokenizer (optional: ids work without one), on an optional mesh."""

    def __init__(self, cfg: Config, model: GPT, tokenizer: Any = None, mesh: Mesh | None = None):
        if tokenizer is not None and tokenizer.vocab_size > cfg.model.vocab_size:
            raise UserError(
                f"the tokenizer has {tokenizer.vocab_size} tokens but the checkpoint's model.vocab_size is "
                f"{cfg.model.vocab_size}; pass the tokenizer the model was trained with (--tokenizer)"
            )
        self.cfg, self.model, self.tokenizer, self.mesh = cfg, model, tokenizer, mesh
        self.eot_id = None if tokenizer is None else tokenizer.eot_id
        # the model's own vocabulary (not the tokenizer's, which may be smaller): sampling and
        # log-probabilities are those of the model, as training's loss and transformers have them
        self.vocab_size = cfg.model.vocab_size
        self.sampler = Sampler(model, eot_id=self.eot_id, vocab_size=self.vocab_size, mesh=mesh)

    def _mesh(self) -> contextlib.AbstractContextManager:
        return jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext()

    def encode(self, text: str) -> list[int]:
        if self.tokenizer is None:
            raise UserError("this checkpoint has no tokenizer; pass one (--tokenizer) or give token ids")
        return self.tokenizer.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        """Ids → text; ids the tokenizer lacks (a model vocabulary larger than it) have none."""
        if self.tokenizer is None:
            return ""
        return self.tokenizer.decode([i for i in ids if i < self.tokenizer.vocab_size])

    def generate(
        self,
        prompt: str | Sequence[int] | Sequence[str] | Sequence[Sequence[int]],
        max_new_tokens: int = 64,
        *,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        method: Method | None = None,
        seed: int = 0,
        num_samples: int = 1,
        stop: Sequence[str] = (),
        logprobs: bool = False,
        on_text: Callable[[str], None] | None = None,
    ) -> Generation:
        """Continue one prompt (text or ids) or a batch of them; ``num_samples`` rows per prompt.

        ``method`` overrides temperature/top_k/top_p. ``on_text`` streams the first row's new text
        as it is produced. Returns one ``Completion`` per row, prompt-major, with the timings.
        """
        prompts = [prompt] if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)) else prompt
        ids = [self.encode(p) if isinstance(p, str) else [int(t) for t in p] for p in prompts]
        rows = [p for p in ids for _ in range(num_samples)]
        method = method or make_method(temperature, top_k, top_p)
        shown = [0]  # characters of row 0 already streamed
        stream = self._streamer(on_text, stop, shown) if on_text is not None else None
        result = self.sampler.generate(rows, max_new_tokens, method=method, seed=seed, on_tokens=stream)
        out = [
            self._completion(r, lp, stop, logprobs) for r, lp in zip(result.ids, result.logprobs, strict=True)
        ]
        if on_text is not None and len(out[0].text) > shown[0]:  # what was held back at the end
            on_text(out[0].text[shown[0] :])
        return Generation(out, result)

    def _completion(
        self, ids: list[int], lps: list[float], stop: Sequence[str], logprobs: bool
    ) -> Completion:
        text = self.decode(ids)
        cut, found = _cut(text, stop)
        if found:  # keep the fewest ids whose text reaches the stop string
            ids = next(ids[:k] for k in range(1, len(ids) + 1) if _cut(self.decode(ids[:k]), stop)[1])
            lps = lps[: len(ids)]
        return Completion(cut, ids, lps if logprobs else None)

    def _streamer(
        self, on_text: Callable[[str], None], stop: Sequence[str], shown: list[int]
    ) -> Callable[[np.ndarray], bool]:
        """A sampler callback passing row 0's new text to ``on_text``, holding back what may be the
        start of a stop string; returns True (stop) once every row has met a stop string."""
        hold = max((len(s) for s in stop), default=1) - 1

        def on_tokens(tokens: np.ndarray) -> bool:
            row = tokens[0].tolist()
            done = self.eot_id is not None and self.eot_id in row
            row = row[: row.index(self.eot_id)] if done else row
            text, found = _cut(self.decode(row), stop)
            ready = len(text) if (found or done) else max(shown[0], len(text) - hold)
            ready -= text[:ready].endswith("\ufffd")  # an incomplete UTF-8 character: wait for the rest
            if ready > shown[0]:
                on_text(text[shown[0] : ready])
                shown[0] = ready
            return bool(stop) and all(_cut(self.decode(r), stop)[1] for r in tokens.tolist())

        return on_tokens

    def score(self, text: str | Sequence[int], *, batch_size: int = 8) -> Score:
        """Log-likelihood and perplexity of a text (or ids); end-of-text is prepended as context
        when the tokenizer has one, so every token of the text is scored."""
        ids = self.encode(text) if isinstance(text, str) else [int(t) for t in text]
        if self.eot_id is not None:
            ids = [self.eot_id, *ids]
        if len(ids) < 2:
            raise UserError("text too short to score; give at least two tokens (or one with a tokenizer)")
        total, count = 0.0, 0
        for logp, mask in self.logprobs_batches(np.asarray(ids), batch_size=batch_size):
            total += float(np.sum(logp[mask]))
            count += int(mask.sum())
        return Score(total, count)

    def logprobs_batches(
        self, ids: np.ndarray, *, batch_size: int, seq_len: int | None = None, max_batches: int = 0
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Token log-probabilities of a stream [n] in windows: yields (logp, mask), each [b, seq_len]."""
        inputs, targets, mask = windows(ids, seq_len or self.cfg.model.n_ctx)
        graphdef, params = nnx.split(self.model)
        for i, start in enumerate(range(0, len(inputs), batch_size)):
            if max_batches and i >= max_batches:
                return
            sl = slice(start, start + batch_size)
            x, y, m = inputs[sl], targets[sl], mask[sl]
            if len(x) < batch_size:  # one shape per run: pad the last batch with masked rows
                extra = batch_size - len(x)
                x, y = (np.concatenate([a, np.zeros((extra, a.shape[1]), a.dtype)]) for a in (x, y))
                m = np.concatenate([m, np.zeros((extra, m.shape[1]), bool)])
            with self._mesh():
                logp, _ = token_logprobs(graphdef, params, x, y, self.vocab_size)
            yield np.asarray(logp), m


def scan_layers_for(backend: str) -> bool:
    """Whether generation on ``backend`` runs the layers scanned over the stacked weights.

    Not on CPU: XLA:CPU copies each layer's weights out of the stacked array before its matmuls,
    and decoding is bound by reading the weights: the per-layer layout decodes GPT-2 124M about
    1.5× faster there (``benchmarks/bench_decode.py --layers scan`` vs ``per-layer``). TPU and
    GPU read a layer's slice in place and compile a scan faster.
    """
    return backend != "cpu"


def load(
    path: str | Path,
    *,
    mesh: Mesh | None = None,
    tokenizer: str | Path | None = None,
    rules: Any = None,
    scan_layers: bool | None = None,
) -> LanguageModel:
    """Load a checkpoint (workdir, manager root or step folder) onto ``mesh`` (None: one device),
    its parameters and activations sharded by ``rules`` (default: the standard table).

    ``scan_layers`` picks the layer layout (None: ``scan_layers_for`` the default backend). The
    tokenizer is ``tokenizer`` when given, else the one stored with the checkpoint, else none
    (generation and scoring then work on token ids).
    """
    from gpt3_jax import checkpoint

    if scan_layers is None:
        scan_layers = scan_layers_for(jax.default_backend())
    cfg, model = checkpoint.load_model(
        path, mesh=mesh, rules=rules, model_overrides={"scan_layers": scan_layers}
    )
    tok_path = tokenizer or checkpoint.tokenizer_path(path)
    tok = None
    if tok_path is not None:
        from gpt3_jax.data.tokenizer import load_tokenizer

        tok = load_tokenizer(tok_path)
    return LanguageModel(cfg, model, tok, mesh)


__all__ = ["Completion", "Generation", "LanguageModel", "Result", "Score", "few_shot_prompt", "load"]
