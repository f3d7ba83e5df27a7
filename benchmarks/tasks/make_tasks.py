"""Writes the three task files of benchmarks/tasks/ (docs/evaluation.md), deterministically:

    python benchmarks/tasks/make_tasks.py            # rewrites the .jsonl files beside this script

- ``word_order.jsonl`` (multiple choice, English): a sentence's last words in their natural order
  against three shuffles of the same words (same bytes, so accuracy_norm = accuracy);
- ``arithmetic.jsonl`` (completion): two-digit addition and subtraction in the paper's
  "Q: What is 48 plus 76?\\nA: 124" format, exact greedy match;
- ``python_syntax.jsonl`` (multiple choice, Python source): the one continuation of four that
  makes the snippet valid Python (checked here with ``compile``); the demo model trains on Python.

The sentences and templates are written for this project; nothing is downloaded.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent

# (prefix, the last words in order): every tail has 3 to 5 words, so 3 distinct shuffles exist.
SENTENCES = [
    ("After dinner we", "walked along the river."),
    ("The old dog slept", "all afternoon by the fire."),
    ("She opened the window", "to let fresh air in."),
    ("Every morning he drinks", "a cup of black coffee."),
    ("The children laughed when", "the clown fell over."),
    ("We missed the train", "because of the rain."),
    ("My grandmother bakes bread", "every Sunday for the family."),
    ("The library closes early", "on public holidays each year."),
    ("He forgot his umbrella", "at the bus stop."),
    ("The farmer fed the", "hungry cows before sunrise."),
    ("They painted the fence", "white last summer."),
    ("The baby fell asleep", "in her father's arms."),
    ("Our teacher read us", "a story about dragons."),
    ("The cat chased a", "mouse under the bed."),
    ("I will call you", "when I get home."),
    ("The shop on the", "corner sells fresh flowers."),
    ("He tied his shoes", "and ran out the door."),
    ("The moon rose slowly", "over the quiet hills."),
    ("She wrote a letter", "to her old friend."),
    ("The soup tastes better", "with a little salt."),
    ("We built a snowman", "in the front garden."),
    ("The pilot welcomed the", "passengers on board the plane."),
    ("My brother plays the", "guitar in a band."),
    ("The students finished their", "homework before the bell."),
    ("A strong wind blew", "the leaves off the trees."),
    ("The doctor told him", "to rest for a week."),
    ("They planted tomatoes and", "beans in the spring."),
    ("The museum has a", "famous painting of the sea."),
    ("Please close the door", "when you leave the room."),
    ("The bakery smells of", "warm bread and cinnamon."),
    ("He carried the heavy", "box up the stairs."),
    ("The river flows past", "the mill to the sea."),
    ("We watched the stars", "from the roof last night."),
    ("The waiter brought us", "two bowls of soup."),
    ("Her phone rang in", "the middle of the film."),
    ("The team celebrated their", "victory with a big dinner."),
    ("The bridge was closed", "for repairs all week."),
    ("I found my keys", "under the kitchen table."),
    ("The bird built a", "nest in the old oak."),
    ("The train arrived ten", "minutes late this morning."),
    ("My sister collects old", "coins from many countries."),
    ("The fire kept us", "warm through the long night."),
    ("He cleaned the windows", "with soap and water."),
    ("The town holds a", "market every Saturday morning."),
    ("We shared a pizza", "after the football match."),
    ("The lamp on my", "desk needs a new bulb."),
    ("Snow covered the roofs", "of the sleeping village."),
    ("The boy kicked the", "ball over the wall."),
    ("She sang a song", "for her mother's birthday."),
    ("The kettle whistled on", "the stove in the kitchen."),
    ("They sailed the small", "boat across the bay."),
    ("The clock in the", "hall stopped at noon."),
    ("He repaired the bicycle", "with his own tools."),
    ("The guests arrived just", "as the rain began."),
    ("The gardener cut the", "grass on Tuesday afternoon."),
    ("Bees buzzed around the", "flowers in the meadow."),
    ("The letter arrived two", "days after her birthday."),
    ("We climbed the hill", "to see the sunset."),
    ("The chef tasted the", "sauce with a spoon."),
    ("Rain fell on the", "roof all night long."),
]

# Python: (context, gold, wrong choices); {a}, {b}, {f}, {xs}, {n} are filled per example.
PYTHON = [
    ("{xs} = [{a} * 2 for {a} in range({n})", "]\n", [")\n", "}}\n", "]]\n"]),
    ("{xs} = ({a} + 1 for {a} in {b}", ")\n", ["]\n", "}}\n", "))\n"]),
    ("{xs} = {{{a}: {n} for {a} in {b}", "}}\n", [")\n", "]\n", "}}}}\n"]),
    ("print({f}({a}, {b}", "))\n", [")]\n", "]]\n", ")\n"]),
    (
        "def {f}({a}, {b})",
        ":\n    return {a}\n",
        [";\n    return {a}\n", "\n    return {a}\n", ":\nreturn {a}\n"],
    ),
    (
        "if {a} > {b}",
        ":\n    {a} = {b}\n",
        [" then:\n    {a} = {b}\n", "\n    {a} = {b}\n", ";\n    {a} = {b}\n"],
    ),
    (
        "for {a} in range({n})",
        ":\n    print({a})\n",
        [" do:\n    print({a})\n", "\n    print({a})\n", ";\n    print({a})\n"],
    ),
    ("while {a} < {n}", ":\n    {a} += 1\n", ["\n    {a} += 1\n", " do:\n    {a} += 1\n", ":\n    {a}++\n"]),
    ("class {C}", ":\n    pass\n", ["\n    pass\n", ":\npass\n", " {{\n    pass\n"]),
    ("class {C}(Exception", "):\n    pass\n", ["]:\n    pass\n", ")\n    pass\n", "):\npass\n"]),
    ("{a} = {{'{k}': {n}", "}}\n", ["]\n", ")\n", ">\n"]),
    ("{a} = [{n}, {n}", "]\n", [")\n", "}}\n", "]]\n"]),
    ("{a} = {f}(", ")\n", ["]\n", "}}\n", "))\n"]),
    ("import {mod}\n{a} = {mod}.", "getcwd()\n", ["getcwd(\n", "(getcwd)\n", "getcwd())\n"]),
    ("try:\n    {f}()\nexcept ValueError", ":\n    pass\n", ["\n    pass\n", ";\n    pass\n", ":\npass\n"]),
    (
        "with open({path!r}) as",
        " f:\n    {a} = f.read()\n",
        [" f\n    {a} = f.read()\n", " (f:\n    {a} = f.read()\n", " f;\n    {a} = f.read()\n"],
    ),
    (
        "def {f}(self",
        "):\n    return self\n",
        ["]:\n    return self\n", ")\n    return self\n", "):\nreturn self\n"],
    ),
    ("{a} = {b} if {b} is not None", " else {n}\n", [" {n}\n", " otherwise {n}\n", " else: {n}\n"]),
    ("{a} = lambda {b}", ": {b} + 1\n", [" {b} + 1\n", ": return {b} + 1\n", " -> {b} + 1\n"]),
    ("assert {a} == {n}", ", 'bad value'\n", [": 'bad value'\n", " 'bad value'\n", ", 'bad value\n"]),
]
NAMES = ["x", "y", "value", "item", "count", "total", "name", "data", "key", "node", "size", "line"]
FUNCS = ["parse", "load", "build", "render", "check", "update", "split_words", "read_config"]
CLASSES = ["Parser", "Reader", "Node", "Config", "Cache", "Error"]
MODULES = ["os"]
PATHS = ["data.txt", "notes.md", "config.ini"]


def compiles(source: str) -> bool:
    try:
        compile(source, "<task>", "exec")
    except SyntaxError:
        return False
    return True


def word_order(rng: random.Random) -> list[dict]:
    rows = []
    for prefix, tail in SENTENCES:
        words = tail.split()
        shuffles: list[str] = []
        while len(shuffles) < 3:
            order = words[:]
            rng.shuffle(order)
            text = " " + " ".join(order)
            if order != words and text not in shuffles:
                shuffles.append(text)
        choices = [" " + tail, *shuffles]
        rng.shuffle(choices)
        rows.append({"context": prefix, "choices": choices, "gold": choices.index(" " + tail)})
    return rows


def arithmetic(rng: random.Random, n: int = 100) -> list[dict]:
    rows = []
    for i in range(n):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        if i % 2:
            a, b = max(a, b), min(a, b)
            rows.append({"context": f"Q: What is {a} minus {b}?\nA:", "completion": f" {a - b}"})
        else:
            rows.append({"context": f"Q: What is {a} plus {b}?\nA:", "completion": f" {a + b}"})
    return rows


def python_syntax(rng: random.Random, per_template: int = 4) -> list[dict]:
    rows = []
    for context, gold, wrong in PYTHON:
        for _ in range(per_template):
            a, b = rng.sample(NAMES, 2)
            slots = dict(
                a=a, b=b, f=rng.choice(FUNCS), xs=rng.choice(NAMES) + "s", n=rng.randint(2, 99),
                C=rng.choice(CLASSES), k=rng.choice(NAMES), mod=rng.choice(MODULES), path=rng.choice(PATHS),
            )  # fmt: skip
            ctx = context.format(**slots)
            choices = [c.format(**slots) for c in (gold, *wrong)]
            assert compiles(ctx + choices[0]), ctx + choices[0]
            assert not any(compiles(ctx + c) for c in choices[1:]), ctx
            right = choices[0]
            rng.shuffle(choices)
            rows.append({"context": ctx, "choices": choices, "gold": choices.index(right)})
    rng.shuffle(rows)
    return rows


def tasks() -> dict[str, list[dict]]:
    """Every task's rows, the same on every run."""
    return {
        "word_order": word_order(random.Random(1)),
        "arithmetic": arithmetic(random.Random(2)),
        "python_syntax": python_syntax(random.Random(3)),
    }


def write(folder: Path = HERE) -> list[Path]:
    paths = []
    for name, rows in tasks().items():
        path = folder / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        paths.append(path)
    return paths


if __name__ == "__main__":
    for path in write():
        print(f"wrote {path}")
