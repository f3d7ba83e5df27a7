"""Task files: one JSON example per line, read and checked; few-shot contexts built from them.

Two kinds, one per file:

    {"context": "The sky is", "choices": [" blue", " green"], "gold": 0}    multiple choice
    {"context": "2 + 2 =", "completion": " 4"}                             completion

Strings are used exactly as given (a choice or completion carries its own leading space). A file
that is not JSON lines of one kind with these keys is a one-line ``UserError`` naming the line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gpt3_jax.errors import UserError

MULTIPLE_CHOICE = "multiple_choice"
COMPLETION = "completion"
FEW_SHOT_SEPARATOR = "\n\n"  # between solved examples and before the question, as the paper's prompts


@dataclass(frozen=True)
class Example:
    """One example: its ``context`` and the candidate continuations (``choices``; a completion task
    has one, the completion) of which ``gold`` is the right one."""

    context: str
    choices: tuple[str, ...]
    gold: int = 0

    @property
    def answer(self) -> str:
        return self.choices[self.gold]


@dataclass(frozen=True)
class Task:
    """A task file's examples, all of one ``kind`` (``MULTIPLE_CHOICE`` or ``COMPLETION``)."""

    name: str
    kind: str
    examples: tuple[Example, ...]

    def __len__(self) -> int:
        return len(self.examples)


def _example(record: object, where: str) -> tuple[str, Example]:
    """One parsed line → (kind, Example), or a UserError naming ``where``."""
    if not isinstance(record, dict):
        raise UserError(f"{where}: an example is a JSON object, got {type(record).__name__}")
    if "choices" in record or "gold" in record:
        kind, keys = MULTIPLE_CHOICE, ("context", "choices", "gold")
    elif "completion" in record:
        kind, keys = COMPLETION, ("context", "completion")
    else:
        raise UserError(
            f"{where}: an example needs the keys context, choices, gold (multiple choice) "
            f"or context, completion (completion); it has {sorted(record)}"
        )
    missing = [k for k in keys if k not in record]
    if missing:
        raise UserError(f"{where}: a {kind.replace('_', ' ')} example needs the key(s) {', '.join(missing)}")
    context = record["context"]
    if not isinstance(context, str):
        raise UserError(f"{where}: context must be a string")
    if kind == COMPLETION:
        completion = record["completion"]
        if not isinstance(completion, str) or not completion:
            raise UserError(f"{where}: completion must be a non-empty string")
        return kind, Example(context, (completion,))
    choices, gold = record["choices"], record["gold"]
    if not (
        isinstance(choices, list) and len(choices) >= 2 and all(isinstance(c, str) and c for c in choices)
    ):
        raise UserError(f"{where}: choices must be a list of at least two non-empty strings")
    if isinstance(gold, bool) or not isinstance(gold, int) or not 0 <= gold < len(choices):
        raise UserError(f"{where}: gold must be an index into choices, 0 to {len(choices) - 1}; got {gold!r}")
    return kind, Example(context, tuple(choices), gold)


def load_task(path: str | Path) -> Task:
    """Read a task file (JSON lines; blank lines are skipped). The task's name is the file's stem."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"task file {str(path)!r} not found; give a .jsonl file of examples")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text; a task file is JSON lines") from None
    kinds, examples = [], []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{where}: not valid JSON ({exc.msg}); write one object per line") from None
        kind, example = _example(record, where)
        if kinds and kind != kinds[0]:
            raise UserError(
                f"{where}: a {kind.replace('_', ' ')} example in a file of {kinds[0].replace('_', ' ')} "
                "examples; keep one kind per file"
            )
        kinds.append(kind)
        examples.append(example)
    if not examples:
        raise UserError(f"{path}: no examples; a task file holds one JSON object per line")
    return Task(path.stem, kinds[0], tuple(examples))


def shot_indices(n: int, index: int, shots: int, seed: int) -> list[int]:
    """``shots`` distinct examples of ``n`` other than ``index``, drawn with ``seed`` (the same
    draw for the same example, whatever else is evaluated)."""
    if shots < 0:
        raise UserError(f"shots must be >= 0, got {shots}")
    if shots > n - 1:
        raise UserError(f"{shots} shots need at least {shots + 1} examples in the task; it has {n}")
    drawn = np.random.default_rng([seed, index]).choice(n - 1, size=shots, replace=False)
    return [int(i) + (i >= index) for i in drawn]  # skip the example itself


def few_shot_context(task: Task, index: int, shots: int = 0, seed: int = 0) -> str:
    """Example ``index``'s context after ``shots`` solved examples of the same task (each its
    context + gold answer), separated by blank lines."""
    solved = [task.examples[i] for i in shot_indices(len(task), index, shots, seed)]
    return "".join(e.context + e.answer + FEW_SHOT_SEPARATOR for e in solved) + task.examples[index].context
