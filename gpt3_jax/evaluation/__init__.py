"""Zero-, one- and few-shot evaluation on tasks, as the GPT-3 paper measures a model.

    from gpt3_jax.evaluation import evaluate
    from gpt3_jax.sampling import load
    lm = load("runs/demo")                                   # or load(path, mesh=make_mesh(...))
    result = evaluate(lm, "benchmarks/tasks/python_syntax.jsonl", shots=4, seed=0)
    result.accuracy, result.accuracy_norm, result.to_json()

Modules: ``tasks`` (task files, few-shot contexts), ``loglikelihood`` (``Scorer``: batched,
bucketed, left-padded log-likelihoods of continuations through one jitted forward pass), ``run``
(``evaluate`` and its results), ``harness`` (the lm-evaluation-harness adapter; needs the
``eval`` extra and is not imported here). docs/evaluation.md says how the scores are computed.
"""

from gpt3_jax.evaluation.loglikelihood import Request, Scored, Scorer, encode_request
from gpt3_jax.evaluation.run import ExampleResult, TaskResult, evaluate
from gpt3_jax.evaluation.tasks import (
    COMPLETION,
    MULTIPLE_CHOICE,
    Example,
    Task,
    few_shot_context,
    load_task,
    shot_indices,
)

__all__ = [
    "COMPLETION",
    "MULTIPLE_CHOICE",
    "Example",
    "ExampleResult",
    "Request",
    "Scored",
    "Scorer",
    "Task",
    "TaskResult",
    "encode_request",
    "evaluate",
    "few_shot_context",
    "load_task",
    "shot_indices",
]
