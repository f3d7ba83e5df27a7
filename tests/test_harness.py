"""The lm-evaluation-harness adapter (the ``eval`` extra; skipped without it), fully offline: tasks
defined in YAML over local JSON lines, run by the harness on our model ``gpt3_jax``, give the
numbers of ``gpt3_jax.evaluation``; its rolling log-likelihood and greedy generation agree with
``LanguageModel.score`` and ``generate``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

os.environ["HF_DATASETS_OFFLINE"] = "1"  # before the harness imports datasets: never download
os.environ["HF_HUB_OFFLINE"] = "1"
lm_eval = pytest.importorskip("lm_eval")

from test_evaluation import CHOICE_EXAMPLES, COMPLETION_EXAMPLES, SHAPE, write_jsonl  # noqa: E402

from gpt3_jax.evaluation import evaluate  # noqa: E402
from gpt3_jax.evaluation.harness import GPT3JaxLM, main  # noqa: E402
from gpt3_jax.sampling import load  # noqa: E402

TASK_YAML = """\
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
  cache_dir: {cache}
test_split: test
output_type: {output_type}
doc_to_text: "{{{{context}}}}"
target_delimiter: ""
{rest}
"""
CHOICE_REST = """\
doc_to_choice: "{{choices}}"
doc_to_target: "{{gold}}"
metric_list:
  - metric: acc
  - metric: acc_norm
"""
COMPLETION_REST = """\
doc_to_target: "{{completion}}"
metric_list:
  - metric: acc
"""


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, gpt2_style_tokenizer: Path) -> Path:
    from flax import nnx

    from gpt3_jax.checkpoint import save_params
    from gpt3_jax.config import Config, ModelConfig
    from gpt3_jax.model import GPT

    cfg = ModelConfig(**SHAPE, init_std=0.2)
    root = tmp_path_factory.mktemp("harness") / "ckpt"
    return save_params(
        root,
        Config(model=cfg),
        nnx.state(GPT(cfg, rngs=nnx.Rngs(1)), nnx.Param),
        tokenizer=gpt2_style_tokenizer,
    )


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    """Two harness tasks over local files: multiple choice (loglikelihood) and completion
    (LAMBADA-style: loglikelihood's greedy flag)."""
    root = tmp_path_factory.mktemp("lm_eval_tasks")
    for name, rows, output_type, rest in (
        ("gpt3jax_choices", CHOICE_EXAMPLES, "multiple_choice", CHOICE_REST),
        ("gpt3jax_completion", COMPLETION_EXAMPLES, "loglikelihood", COMPLETION_REST),
    ):
        data = write_jsonl(root / f"{name}.jsonl", rows)
        text = TASK_YAML.format(
            name=name, data=data, cache=root / "cache", output_type=output_type, rest=rest
        )
        (root / f"{name}.yaml").write_text(text)
    return root


def _simple_evaluate(ckpt: Path, task_dir: Path, tasks: list[str]) -> dict:
    from lm_eval.tasks import TaskManager

    return lm_eval.simple_evaluate(
        model="gpt3_jax",
        model_args=f"checkpoint={ckpt}",
        tasks=tasks,
        num_fewshot=0,
        batch_size=8,
        task_manager=TaskManager(include_path=str(task_dir)),
        log_samples=True,
    )


@pytest.mark.slow
def test_harness_tasks_give_our_numbers(ckpt: Path, task_dir: Path) -> None:
    out = _simple_evaluate(ckpt, task_dir, ["gpt3jax_choices", "gpt3jax_completion"])
    lm = load(ckpt)
    ours = evaluate(lm, task_dir / "gpt3jax_choices.jsonl")
    theirs = out["results"]["gpt3jax_choices"]
    assert theirs["acc,none"] == pytest.approx(ours.accuracy)
    assert theirs["acc_norm,none"] == pytest.approx(ours.accuracy_norm)  # ASCII: per byte = per character
    samples = sorted(out["samples"]["gpt3jax_choices"], key=lambda s: s["doc_id"])
    for sample, example in zip(samples, ours.examples, strict=True):
        lls = [float(r[0][0]) for r in sample["resps"]]
        assert lls == pytest.approx(example.loglikelihoods, abs=1e-4)

    ours = evaluate(lm, task_dir / "gpt3jax_completion.jsonl")
    assert out["results"]["gpt3jax_completion"]["acc,none"] == pytest.approx(ours.accuracy)
    samples = sorted(out["samples"]["gpt3jax_completion"], key=lambda s: s["doc_id"])
    for sample, example in zip(samples, ours.examples, strict=True):
        (ll, greedy), *_ = sample["resps"][0]
        assert float(ll) == pytest.approx(example.loglikelihoods[0], abs=1e-4)
        assert bool(greedy) == example.correct


def test_rolling_log_likelihood_is_the_text_score(ckpt: Path) -> None:
    """One window: the score of the text after end-of-text. Several: when the windows are full
    (the token count a multiple of n_ctx) the harness's rolling windows are ``score``'s windows."""
    lm = load(ckpt)
    adapter = GPT3JaxLM(lm=lm, batch_size=4)
    story = "Now is the winter of our discontent made glorious summer by this sun of York. " * 8
    long = next(story[:k] for k in range(len(story)) if len(lm.encode(story[:k])) == 128)  # 2 × n_ctx
    texts = ["To be, or not to be, that is the question:", long]
    rolled = adapter.loglikelihood_rolling([SimpleNamespace(args=(t,)) for t in texts])
    for text, total in zip(texts, rolled, strict=True):
        assert total == pytest.approx(lm.score(text).log_likelihood, abs=1e-3)


@pytest.mark.slow
def test_generate_until_is_greedy_generation(ckpt: Path) -> None:
    """Greedy continuations cut at the stop strings; the prompt keeps its last n_ctx - max_gen_toks
    tokens, as the harness's own models cut it."""
    lm = load(ckpt)
    adapter = GPT3JaxLM(lm=lm, batch_size=2)
    prompts = ["To be, or not", "Once more unto the breach, dear friends, once more", "def main():\n"]
    settings = [
        {"until": ["\n"], "max_gen_toks": 12},
        {"until": ",", "max_gen_toks": 60},
        {"max_gen_toks": 5},
    ]
    requests = [SimpleNamespace(args=(p, g)) for p in prompts for g in settings]
    texts = adapter.generate_until(requests)
    for req, text in zip(requests, texts, strict=True):
        prompt, g = req.args
        until = g.get("until", [])
        ids = lm.encode(prompt)[-(64 - g["max_gen_toks"]) :]
        [expected] = lm.generate(ids, g["max_gen_toks"], stop=[until] if isinstance(until, str) else until)
        assert text == expected.text
    with pytest.raises(Exception, match="not supported"):
        adapter.generate_until([SimpleNamespace(args=("x", {"num_beams": 4}))])


@pytest.mark.slow
def test_command_line_runs_a_local_task(ckpt: Path, task_dir: Path, tmp_path: Path, capsys) -> None:
    """``python -m gpt3_jax.evaluation`` is ``lm_eval`` with ``--model gpt3_jax`` known."""
    code = main(
        [
            "--model", "gpt3_jax", "--model_args", f"checkpoint={ckpt}", "--tasks", "gpt3jax_choices",
            "--include_path", str(task_dir), "--batch_size", "4", "--output_path", str(tmp_path / "out"),
        ]
    )  # fmt: skip
    assert code == 0
    (result,) = tmp_path.glob("out/**/results*.json")
    acc = json.loads(result.read_text())["results"]["gpt3jax_choices"]["acc,none"]
    assert acc == pytest.approx(evaluate(load(ckpt), task_dir / "gpt3jax_choices.jsonl").accuracy)
    assert "gpt3jax_choices" in capsys.readouterr().out  # the harness's table
