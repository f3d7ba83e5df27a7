"""lm-evaluation-harness adapter: our checkpoints as the harness's model ``gpt3_jax``.

Needs the ``eval`` extra (``pip install -e '.[eval]'``). Importing this module registers the model;
lm-eval 0.4 discovers no models outside its own source, so the command line is ``python -m
gpt3_jax.evaluation`` (``main`` here), which takes exactly ``lm_eval``'s arguments::

    python -m gpt3_jax.evaluation --model gpt3_jax --model_args checkpoint=runs/demo \\
        --tasks lambada_openai,hellaswag --num_fewshot 0 --batch_size 16

and the Python API is the harness's own::

    import lm_eval
    from gpt3_jax.evaluation.harness import GPT3JaxLM
    lm_eval.simple_evaluate(model=GPT3JaxLM(checkpoint="runs/demo"), tasks=["hellaswag"])
    # or, once this module is imported: simple_evaluate(model="gpt3_jax", model_args="checkpoint=...")

``loglikelihood`` and ``loglikelihood_rolling`` run on the batched, bucketed forward pass of
``gpt3_jax.evaluation.Scorer`` (the harness's encoding of context and continuation, its left cut
of long contexts and its rolling windows); ``generate_until`` on the jitted KV-cache sampler, greedy
unless the task asks for sampling. ``--model_args``: ``checkpoint`` (required), ``tokenizer``,
``max_gen_toks`` (256), ``seed`` (0); ``--batch_size`` is the rows per batch (default 16).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from gpt3_jax.errors import UserError
from gpt3_jax.evaluation.loglikelihood import Request, Scorer
from gpt3_jax.sampling import LanguageModel, load

GENERATION_KEYS = ("until", "max_gen_toks", "do_sample", "temperature", "top_k", "top_p")


def _batch_size(value: Any, default: int = 16) -> int:
    """The harness passes ``--batch_size`` through as given: ``8``, ``"8"`` or ``"auto"``."""
    text = str(value)
    return int(text) if text.isdigit() and int(text) > 0 else default


@register_model("gpt3_jax")
class GPT3JaxLM(TemplateLM):
    """A gpt3_jax checkpoint (or an already loaded ``LanguageModel``: ``lm=``) as a harness model."""

    def __init__(
        self,
        checkpoint: str | None = None,
        *,
        tokenizer: str | None = None,
        lm: LanguageModel | None = None,
        mesh: Any = None,
        batch_size: int | str = 16,
        max_gen_toks: int | str = 256,
        seed: int | str = 0,
        **ignored: Any,  # the harness also passes device and max_batch_size; JAX places the model
    ):
        super().__init__()
        if lm is None:
            if not checkpoint:
                raise UserError("give the checkpoint: --model_args checkpoint=DIR")
            lm = load(checkpoint, tokenizer=tokenizer, mesh=mesh)
        if lm.tokenizer is None:
            raise UserError("the checkpoint has no tokenizer; pass --model_args checkpoint=DIR,tokenizer=TOK")
        self.lm = lm
        self.batch_size = _batch_size(batch_size)
        self.max_gen_toks, self.seed = int(max_gen_toks), int(seed)
        self.scorer = Scorer.from_language_model(lm, batch_size=self.batch_size)

    @property
    def eot_token_id(self) -> int:
        return self.lm.eot_id

    @property
    def max_length(self) -> int:
        return self.lm.cfg.model.n_ctx

    @property
    def tokenizer_name(self) -> str:
        return f"gpt3_jax-{self.lm.tokenizer.checksum[:16]}"

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        return self.lm.encode(string)

    def tok_decode(self, ids: Sequence[int]) -> str:
        return self.lm.decode(ids)

    def _loglikelihood_tokens(
        self, requests: list[tuple[Any, list[int], list[int]]], disable_tqdm: bool = False, **kwargs: Any
    ) -> list[tuple[float, bool]]:
        scored = self.scorer(
            [Request(tuple(ctx), tuple(cont)) for _, ctx, cont in requests],
            progress=not disable_tqdm,
            desc="loglikelihood",
        )
        out = []
        for (key, _, _), s in zip(requests, scored, strict=True):
            out.append((s.loglikelihood, s.greedy))
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, out[-1])
        return out

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """Each text's log-likelihood in disjoint windows of the model's context, every token
        predicted once with as much context as fits (the harness's rolling windows)."""
        windows, owners = [], []
        for i, (text,) in enumerate(req.args for req in requests):
            pairs = get_rolling_token_windows(
                token_list=self.tok_encode(text),
                prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length,
                context_len=1,
            )
            for context, continuation in map(make_disjoint_window, pairs):
                windows.append(Request(tuple(context), tuple(continuation)))
                owners.append(i)
        totals = [0.0] * len(requests)
        for i, s in zip(owners, self.scorer(windows, progress=not disable_tqdm, desc="rolling"), strict=True):
            totals[i] += s.loglikelihood
        for req, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Continuations until a stop string (``until``), ``max_gen_toks`` tokens or end of text;
        requests with the same generation settings run as batches."""
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(json.dumps(req.args[1], sort_keys=True, default=str), []).append(i)
        out: list[str] = [""] * len(requests)
        for key, members in groups.items():
            until, max_new, settings = self._generation_settings(json.loads(key))
            for start in range(0, len(members), self.batch_size):
                batch = members[start : start + self.batch_size]
                prompts = [self._prompt(requests[i].args[0], max_new) for i in batch]
                generation = self.lm.generate(prompts, max_new, stop=until, seed=self.seed, **settings)
                for i, completion in zip(batch, generation, strict=True):
                    out[i] = completion.text
                    self.cache_hook.add_partial("generate_until", requests[i].args, completion.text)
        return out

    def _generation_settings(self, kwargs: dict[str, Any]) -> tuple[list[str], int, dict[str, Any]]:
        """A task's ``gen_kwargs`` → stop strings, new-token budget, and the sampling method
        (greedy unless ``do_sample``)."""
        unknown = sorted(set(kwargs) - set(GENERATION_KEYS))
        if unknown:
            raise UserError(f"generation settings {unknown} are not supported; use {list(GENERATION_KEYS)}")
        until = kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        max_new = max(1, min(int(kwargs.get("max_gen_toks", self.max_gen_toks)), self.max_length - 1))
        if not kwargs.get("do_sample", False):
            return until, max_new, {"temperature": 0.0}
        return (
            until,
            max_new,
            {
                "temperature": float(kwargs.get("temperature", 1.0)),
                "top_k": int(kwargs.get("top_k") or 0),
                "top_p": float(kwargs.get("top_p") or 1.0),
            },
        )

    def _prompt(self, context: str, max_new: int) -> list[int]:
        """The context's ids, cut from the left to leave room for ``max_new`` tokens (end of text
        alone for an empty context)."""
        ids = self.tok_encode(context) or [self.eot_token_id]
        return ids[-(self.max_length - max_new) :]


def main(argv: Sequence[str] | None = None) -> int:
    """``lm_eval``'s command line with the ``gpt3_jax`` model registered."""
    from lm_eval.__main__ import cli_evaluate

    sys.argv = ["lm_eval", *(sys.argv[1:] if argv is None else argv)]
    try:
        cli_evaluate()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
