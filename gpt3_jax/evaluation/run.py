"""Evaluate a model on a task at K shots: accuracy as the GPT-3 paper and lm-evaluation-harness count it.

- multiple choice: the prediction is the choice of highest log-likelihood (``accuracy``, the
  harness's ``acc``); ``accuracy_norm`` (the harness's ``acc_norm``) divides each choice's
  log-likelihood by its length in UTF-8 bytes first, so long choices are not penalised for
  having more tokens;
- completion: correct when every token of the completion is the model's greedy choice given the
  tokens before it (LAMBADA's exact match), read from the same forward pass; ``loglikelihood`` is
  the completion's mean log-likelihood over the examples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpt3_jax.errors import UserError
from gpt3_jax.evaluation.loglikelihood import Scorer, encode_request
from gpt3_jax.evaluation.tasks import MULTIPLE_CHOICE, Task, few_shot_context, load_task
from gpt3_jax.sampling import LanguageModel


@dataclass(frozen=True)
class ExampleResult:
    """One example: the log-likelihood of each choice (one for a completion), the prediction
    (a choice's index; for a completion the greedy text up to the first wrong token, included) and
    whether it is right."""

    loglikelihoods: list[float]
    pred: int | str
    correct: bool
    pred_norm: int | None = None  # multiple choice: the prediction by log-likelihood per byte
    correct_norm: bool | None = None

    def to_json(self, kind: str) -> dict[str, Any]:
        if kind == MULTIPLE_CHOICE:
            return {
                "loglikelihoods": self.loglikelihoods,
                "pred": self.pred,
                "pred_norm": self.pred_norm,
                "correct": self.correct,
                "correct_norm": self.correct_norm,
            }
        return {"loglikelihoods": self.loglikelihoods[0], "pred": self.pred, "correct": self.correct}


def _mean_stderr(values: list[bool]) -> tuple[float, float]:
    """Mean, and its standard error (the sample standard deviation / sqrt(n), as the harness)."""
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return mean, math.sqrt(var / n)


@dataclass(frozen=True)
class TaskResult:
    """A task's scores at ``shots`` shots, and every example's result, in file order."""

    task: str
    kind: str
    shots: int
    seed: int
    examples: list[ExampleResult] = field(repr=False)

    @property
    def n(self) -> int:
        return len(self.examples)

    @property
    def accuracy(self) -> float:
        return _mean_stderr([e.correct for e in self.examples])[0]

    @property
    def accuracy_stderr(self) -> float:
        return _mean_stderr([e.correct for e in self.examples])[1]

    @property
    def accuracy_norm(self) -> float | None:
        if self.kind != MULTIPLE_CHOICE:
            return None
        return _mean_stderr([bool(e.correct_norm) for e in self.examples])[0]

    @property
    def loglikelihood(self) -> float | None:
        """Completion tasks: the completion's log-likelihood, averaged over the examples."""
        if self.kind == MULTIPLE_CHOICE:
            return None
        return sum(e.loglikelihoods[0] for e in self.examples) / self.n

    def metrics(self) -> dict[str, float]:
        """The summary numbers: accuracy, and accuracy_norm or loglikelihood by the task's kind."""
        out = {"accuracy": self.accuracy, "accuracy_stderr": self.accuracy_stderr}
        if self.kind == MULTIPLE_CHOICE:
            out["accuracy_norm"] = self.accuracy_norm
        else:
            out["loglikelihood"] = self.loglikelihood
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "kind": self.kind,
            "shots": self.shots,
            "seed": self.seed,
            "n": self.n,
            **self.metrics(),
            "examples": [e.to_json(self.kind) for e in self.examples],
        }


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)  # the first of equals, as numpy's


def evaluate(
    lm: LanguageModel,
    task: Task | str | Path,
    *,
    shots: int = 0,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = False,
) -> TaskResult:
    """Score every example of ``task`` (a ``Task`` or a task file) at ``shots`` shots, drawn with
    ``seed``, in one batched pass over the model of ``lm`` (on its mesh), ``batch_size`` rows at a
    time at most. ``progress`` shows a bar on stderr."""
    task = task if isinstance(task, Task) else load_task(task)
    tokenizer = lm.tokenizer
    if tokenizer is None:
        raise UserError("evaluating a task needs a tokenizer; this model has none (pass --tokenizer)")
    scorer = Scorer.from_language_model(lm, batch_size=batch_size)
    requests, spans = [], []
    for i, example in enumerate(task.examples):
        context = few_shot_context(task, i, shots, seed)
        spans.append((len(requests), len(example.choices)))
        for choice in example.choices:
            requests.append(encode_request(tokenizer, context, choice))
            if not requests[-1].continuation:
                raise UserError(
                    f"{task.name}: example {i + 1}: {choice!r} adds no token to its context "
                    "(the tokenizer merges it into the context's last token)"
                )
    scored = scorer(requests, progress=progress, desc=f"{task.name} {shots}-shot")
    results = []
    for example, (start, count) in zip(task.examples, spans, strict=True):
        mine = scored[start : start + count]
        lls = [s.loglikelihood for s in mine]
        if task.kind == MULTIPLE_CHOICE:
            per_byte = [ll / len(c.encode("utf-8")) for ll, c in zip(lls, example.choices, strict=True)]
            pred, pred_norm = _argmax(lls), _argmax(per_byte)
            results.append(
                ExampleResult(lls, pred, pred == example.gold, pred_norm, pred_norm == example.gold)
            )
        else:
            (s,), (request,) = mine, requests[start : start + 1]
            target = list(request.continuation)
            wrong = next((j for j, (a, t) in enumerate(zip(s.argmax, target, strict=True)) if a != t), None)
            greedy_ids = target if wrong is None else [*target[:wrong], s.argmax[wrong]]
            results.append(ExampleResult(lls, tokenizer.decode(greedy_ids), s.greedy))
    return TaskResult(task.name, task.kind, shots, seed, results)


def load_tasks(paths: Sequence[str | Path]) -> list[Task]:
    """Task files for ``train.eval_tasks``, checked, with distinct names (they name the metrics)."""
    tasks = [load_task(p) for p in paths]
    names = [t.name for t in tasks]
    for name in names:
        if names.count(name) > 1:
            raise UserError(f"train.eval_tasks: two task files are named {name!r}; rename one")
    return tasks


def task_metrics(lm: LanguageModel, tasks: Sequence[Task], *, batch_size: int = 16) -> dict[str, float]:
    """Each task's 0-shot scores as ``eval_<task>_accuracy`` (and ``_accuracy_norm`` or
    ``_loglikelihood``): what training logs at every eval."""
    out = {}
    for task in tasks:
        result = evaluate(lm, task, batch_size=batch_size)
        out |= {f"eval_{task.name}_{k}": v for k, v in result.metrics().items() if k != "accuracy_stderr"}
    return out
