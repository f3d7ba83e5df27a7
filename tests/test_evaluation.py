"""Task evaluation (``gpt3-jax eval --task``, ``gpt3_jax.evaluation``): task files and their errors,
few-shot contexts, batched log-likelihoods equal to one-at-a-time ones (on a mesh too), equality
with ``transformers`` for a converted GPT-2, and the scores logged during training."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from gpt3_jax.cli import main
from gpt3_jax.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
SHAPE = dict(n_layer=2, d_model=32, n_head=4, n_ctx=64, vocab_size=512, local_window=8, dtype="float32")

CHOICE_EXAMPLES = [
    {"context": "The cat sat on the", "choices": [" mat.", " moon.", " idea."], "gold": 0},
    {"context": "To be, or not to be,", "choices": [" that is the question:", " no"], "gold": 0},
    {
        "context": "KING HENRY:\nOnce more unto the",
        "choices": [" breach", " sea", " house, dear friends"],
        "gold": 0,
    },
    {"context": "def main():\n    return", "choices": [" 0", " x + 1", " None"], "gold": 2},
    {"context": "Two plus two is", "choices": [" four", " five", " twenty-two"], "gold": 0},
    {"context": "My kingdom for a", "choices": [" horse!", " cow!", " crown of gold!"], "gold": 0},
    {"context": "Now is the winter of our", "choices": [" discontent", " summer"], "gold": 0},
    {"context": "import", "choices": [" os", " sys", " re"], "gold": 1},
    {"context": "Friends, Romans, countrymen, lend me your", "choices": [" ears;", " eyes;"], "gold": 0},
    {"context": "All the world's a", "choices": [" stage,", " garden,", " book,"], "gold": 0},
]
COMPLETION_EXAMPLES = [
    {"context": "To be, or not to", "completion": " be"},
    {"context": "First Citizen:\nBefore we proceed any further, hear me", "completion": " speak."},
    {"context": "for i in range(", "completion": "10):"},
    {"context": "O Romeo, Romeo! wherefore art thou", "completion": " Romeo?"},
    {"context": "1, 2, 3,", "completion": " 4"},
    {"context": "The quick brown fox", "completion": " jumps over the lazy dog"},
]
LONG = " ".join(["Once upon a time there was a long story that went on and on."] * 12)  # > n_ctx tokens


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def run_cli(capsys, *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def tasks(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tasks")
    long_example = {"context": LONG + " The end of the", "choices": [" story.", " road."], "gold": 0}
    return {
        "choices": write_jsonl(root / "choices.jsonl", [*CHOICE_EXAMPLES, long_example]),
        "completion": write_jsonl(root / "completion.jsonl", COMPLETION_EXAMPLES),
    }


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, gpt2_style_tokenizer: Path) -> Path:
    """A random model (dense and locally banded layers) with the byte-level BPE, saved as a checkpoint."""
    from flax import nnx

    from gpt3_jax.checkpoint import save_params
    from gpt3_jax.config import Config, ModelConfig
    from gpt3_jax.model import GPT

    cfg = ModelConfig(**SHAPE, init_std=0.2)
    root = tmp_path_factory.mktemp("eval") / "ckpt"
    params = nnx.state(GPT(cfg, rngs=nnx.Rngs(0)), nnx.Param)
    return save_params(root, Config(model=cfg), params, tokenizer=gpt2_style_tokenizer)


# --- task files ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "lines, message",
    [
        ([], "no examples"),
        (["", "  "], "no examples"),
        (["{not json"], ":1: not valid JSON"),
        (["[1, 2]"], ":1: an example is a JSON object, got list"),
        ([{"context": "a"}], ":1: an example needs the keys context, choices, gold"),
        ([{"context": "a", "choices": [" b", " c"]}], ":1: a multiple choice example needs the key(s) gold"),
        ([{"choices": [" b", " c"], "gold": 0}], ":1: a multiple choice example needs the key(s) context"),
        ([{"completion": " b"}], "a completion example needs the key(s) context"),
        (
            [{"context": "a", "choices": [" b", " c"], "gold": 2}],
            ":1: gold must be an index into choices, 0 to 1",
        ),
        ([{"context": "a", "choices": [" b", " c"], "gold": -1}], "gold must be an index"),
        ([{"context": "a", "choices": [" b", " c"], "gold": True}], "gold must be an index"),
        ([{"context": "a", "choices": [" b"], "gold": 0}], "at least two non-empty strings"),
        ([{"context": "a", "choices": [" b", ""], "gold": 0}], "at least two non-empty strings"),
        ([{"context": 3, "completion": " b"}], "context must be a string"),
        ([{"context": "a", "completion": ""}], "completion must be a non-empty string"),
        (
            [{"context": "a", "completion": " b"}, {"context": "a", "choices": [" b", " c"], "gold": 0}],
            ":2: a multiple choice example in a file of completion examples; keep one kind per file",
        ),
    ],
)
def test_bad_task_file_is_a_one_line_error(ckpt: Path, tmp_path: Path, capsys, lines, message) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", lines)
    code, out, err = run_cli(capsys, "eval", "--checkpoint", ckpt, "--task", path)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert message in err


def test_task_file_that_is_missing_or_not_text(ckpt: Path, tmp_path: Path, capsys) -> None:
    code, _, err = run_cli(capsys, "eval", "--checkpoint", ckpt, "--task", tmp_path / "none.jsonl")
    assert code == 2 and "not found" in err and err.count("\n") == 1
    (tmp_path / "bin.jsonl").write_bytes(b"\xff\xfe\x00")
    code, _, err = run_cli(capsys, "eval", "--checkpoint", ckpt, "--task", tmp_path / "bin.jsonl")
    assert code == 2 and "not UTF-8" in err and err.count("\n") == 1


def test_too_many_shots_and_task_with_input_are_errors(ckpt: Path, tasks, capsys) -> None:
    code, _, err = run_cli(capsys, "eval", "--checkpoint", ckpt, "--task", tasks["completion"], "--shots", 6)
    assert code == 2 and "6 shots need at least 7 examples in the task; it has 6" in err
    code, _, err = run_cli(capsys, "eval", "--checkpoint", ckpt, "--task", tasks["completion"], "--shots", -1)
    assert code == 2 and "shots must be >= 0" in err
    code, _, err = run_cli(
        capsys, "eval", "--checkpoint", ckpt, "--task", tasks["completion"], "--input", tasks["completion"]
    )
    assert code == 2 and "not both" in err


def test_shots_are_other_examples_drawn_with_the_seed(tasks) -> None:
    from gpt3_jax.evaluation import few_shot_context, load_task, shot_indices

    task = load_task(tasks["choices"])
    n = len(task)
    for i in range(n):
        drawn = shot_indices(n, i, 4, seed=7)
        assert len(set(drawn)) == 4 and i not in drawn and all(0 <= j < n for j in drawn)
        assert drawn == shot_indices(n, i, 4, seed=7)  # the same draw every time
    assert any(shot_indices(n, i, 4, 7) != shot_indices(n, i, 4, 8) for i in range(n))
    assert sorted(shot_indices(n, 3, n - 1, 0)) == [j for j in range(n) if j != 3]  # all the others

    a, b = (task.examples[j] for j in shot_indices(n, 0, 2, seed=1))
    expected = f"{a.context}{a.answer}\n\n{b.context}{b.answer}\n\n{task.examples[0].context}"
    assert few_shot_context(task, 0, 2, seed=1) == expected
    assert few_shot_context(task, 0, 0) == task.examples[0].context


def test_continuation_tokens_are_split_as_the_harness_does(gpt2_style_tokenizer: Path) -> None:
    from gpt3_jax.data import load_tokenizer
    from gpt3_jax.evaluation import encode_request

    tok = load_tokenizer(gpt2_style_tokenizer)
    req = encode_request(tok, "The cat sat on the", " mat.")
    assert list(req.context) == tok.encode("The cat sat on the")
    assert list(req.context + req.continuation) == tok.encode("The cat sat on the mat.")
    # a context ending in a space: strings are used as given, the split is by token count
    whole = tok.encode("The cat sat on the mat.")
    req = encode_request(tok, "The cat sat on the ", "mat.")
    assert list(req.context) == tok.encode("The cat sat on the ")
    assert list(req.continuation) == whole[len(req.context) :]
    req = encode_request(tok, "", "Hello")  # an empty context is end-of-text
    assert req.context == (tok.eot_id,) and list(req.continuation) == tok.encode("Hello")


def test_choice_with_no_token_of_its_own_is_an_error(ckpt: Path, tmp_path: Path) -> None:
    """A tokenizer may merge a choice into the context's last token: one line naming the example."""
    from types import SimpleNamespace

    from gpt3_jax.evaluation import evaluate
    from gpt3_jax.sampling import load

    lm = load(ckpt)
    lm.tokenizer = SimpleNamespace(encode=lambda text: [5] * min(len(text), 3), eot_id=0, vocab_size=512)
    path = write_jsonl(tmp_path / "t.jsonl", [{"context": "abc", "choices": [" d", " e"], "gold": 0}])
    with pytest.raises(UserError, match=r"t: example 1: ' d' adds no token to its context"):
        evaluate(lm, path)


# --- the batched forward pass ----------------------------------------------------------------


def _requests(ckpt: Path, tasks) -> list:
    from gpt3_jax.data import load_tokenizer
    from gpt3_jax.evaluation import encode_request, few_shot_context, load_task

    tok = load_tokenizer(ckpt)
    out = []
    for path in tasks.values():
        task = load_task(path)
        for shots in (0, 3):
            for i, ex in enumerate(task.examples):
                out += [encode_request(tok, few_shot_context(task, i, shots, 0), c) for c in ex.choices]
    return out


def _reference_scorer(model, n_ctx: int):
    """Requests scored independently of the Scorer: each on its own row, RIGHT-padded to n_ctx with
    the default positions (causal attention never lets a token see the padding after it)."""
    import jax
    from flax import nnx

    graphdef, params = nnx.split(model)
    forward = jax.jit(lambda p, x: jax.nn.log_softmax(nnx.merge(graphdef, p)(x)[0][..., :512], axis=-1))

    def score(request) -> tuple[float, list[int]]:
        row = [*request.context, *request.continuation][-(n_ctx + 1) :][:-1]
        logp = np.asarray(forward(params, np.asarray([row + [0] * (n_ctx - len(row))], np.int32)))[0]
        cont = list(request.continuation)
        logp = logp[len(row) - len(cont) : len(row)]
        return float(logp[np.arange(len(cont)), cont].sum()), logp.argmax(-1).tolist()

    return score


def test_batched_log_likelihoods_equal_one_at_a_time(ckpt: Path, tasks) -> None:
    """Left padding, length buckets, the cut of long contexts and the row padding of the last batch
    change nothing: every request scores as on its own unpadded row, in batches or one at a time,
    on one device or on a mesh."""
    from gpt3_jax.config import MeshConfig
    from gpt3_jax.evaluation import Scorer
    from gpt3_jax.sampling import load
    from gpt3_jax.sharding import make_mesh

    lm = load(ckpt)
    n_ctx = lm.cfg.model.n_ctx
    requests = _requests(ckpt, tasks)
    lengths = {len(r.context) + len(r.continuation) for r in requests}
    assert min(lengths) < 16 and max(lengths) > n_ctx + 1  # several buckets, and cuts
    reference = list(map(_reference_scorer(lm.model, n_ctx), requests))
    alone = Scorer.from_language_model(lm, batch_size=1)
    one_at_a_time = [alone([r])[0] for r in requests]
    batched = Scorer.from_language_model(lm, batch_size=16)(requests)
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    on_mesh = Scorer.from_language_model(load(ckpt, mesh=mesh), batch_size=16)(requests)
    for (ll, argmax), *scored in zip(reference, one_at_a_time, batched, on_mesh, strict=True):
        for s in scored:
            assert s.loglikelihood == pytest.approx(ll, abs=1e-4) and list(s.argmax) == argmax


def test_one_compile_per_bucket(ckpt: Path, tasks) -> None:
    """The jitted function compiles once per (rows, length, targets) shape, not per request."""
    from gpt3_jax.evaluation import Scorer
    from gpt3_jax.sampling import load
    from gpt3_jax.sampling.score import token_logprobs

    requests = _requests(ckpt, tasks)
    scorer = Scorer.from_language_model(load(ckpt), batch_size=8)
    before = token_logprobs._cache_size()
    scorer(requests)
    compiled = token_logprobs._cache_size() - before
    assert 1 <= compiled <= 6 < len(requests) // 8  # buckets of 16, 32 and 64 tokens; a last batch each


def test_scorer_rejects_what_does_not_fit(ckpt: Path) -> None:
    from gpt3_jax.evaluation import Request, Scorer
    from gpt3_jax.sampling import load

    scorer = Scorer.from_language_model(load(ckpt))
    with pytest.raises(UserError, match="continuation of 65 tokens does not fit the model's context of 64"):
        scorer([Request((1,), tuple(range(65)))])
    with pytest.raises(UserError, match="token id 600 is outside the vocabulary"):
        scorer([Request((1,), (600,))])
    with pytest.raises(UserError, match="non-empty context and continuation"):
        scorer([Request((), (1,))])


# --- the command -----------------------------------------------------------------------------


def test_eval_task_json(ckpt: Path, tasks, capsys) -> None:
    from gpt3_jax.evaluation import evaluate
    from gpt3_jax.sampling import load

    code, out, err = run_cli(
        capsys, "eval", "--checkpoint", ckpt, "--task", tasks["choices"], "--shots", 2, "--seed", 3, "--json"
    )
    assert code == 0 and "choices 2-shot" in err  # the progress bar
    result = json.loads(out)
    assert {"task", "shots", "n", "accuracy", "accuracy_norm", "examples"} <= set(result)
    assert (result["task"], result["shots"], result["seed"], result["n"]) == ("choices", 2, 3, 11)
    for row, ex in zip(result["examples"], CHOICE_EXAMPLES, strict=False):
        lls = row["loglikelihoods"]
        assert len(lls) == len(ex["choices"]) and row["pred"] == int(np.argmax(lls))
        per_byte = [ll / len(c.encode()) for ll, c in zip(lls, ex["choices"], strict=True)]
        assert row["pred_norm"] == int(np.argmax(per_byte))
        assert row["correct"] == (row["pred"] == ex["gold"])
    assert result["accuracy"] == pytest.approx(np.mean([r["correct"] for r in result["examples"]]))
    assert result["accuracy_norm"] == pytest.approx(np.mean([r["correct_norm"] for r in result["examples"]]))
    python = evaluate(load(ckpt), tasks["choices"], shots=2, seed=3).to_json()
    assert python == result  # the Python API gives what the command prints

    code, out, _ = run_cli(capsys, "eval", "--checkpoint", ckpt, "--task", tasks["completion"], "--json")
    result = json.loads(out)
    assert code == 0 and "loglikelihood" in result and "accuracy_norm" not in result
    lls = [r["loglikelihoods"] for r in result["examples"]]
    assert all(isinstance(ll, float) and ll < 0 for ll in lls)
    assert result["loglikelihood"] == pytest.approx(np.mean(lls))
    assert all(isinstance(r["pred"], str) for r in result["examples"])

    code, out, _ = run_cli(capsys, "eval", "--checkpoint", ckpt, "--task", tasks["choices"])
    assert code == 0 and out.startswith("choices: 0-shot, n 11, accuracy ") and "accuracy_norm" in out


# --- against transformers --------------------------------------------------------------------


def _reference(model, tokenizer, context: str, continuation: str, n_ctx: int) -> tuple[float, str]:
    """lm-evaluation-harness's recipe with transformers: the continuation's tokens are those of
    context + continuation after the context's; the row is cut from the left to n_ctx + 1 tokens."""
    import torch

    ctx = tokenizer(context)["input_ids"]
    cont = tokenizer(context + continuation)["input_ids"][len(ctx) :]
    row = (ctx + cont)[-(n_ctx + 1) :][:-1]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([row])).logits[0].double(), -1)[-len(cont) :]
    picked = logp[torch.arange(len(cont)), torch.tensor(cont)]
    top = logp.argmax(-1).tolist()
    wrong = next((j for j, (a, b) in enumerate(zip(top, cont, strict=True)) if a != b), len(cont))
    greedy = tokenizer.decode(cont[:wrong] + top[wrong : wrong + 1], clean_up_tokenization_spaces=False)
    return float(picked.sum()), greedy


@pytest.mark.compare
@pytest.mark.parametrize("shots", [0, 3])
def test_log_likelihoods_match_transformers(transformers_gpt2, tasks, shots: int, capsys) -> None:
    from gpt3_jax.evaluation import few_shot_context, load_task

    model, tokenizer, root = transformers_gpt2
    n_ctx = model.config.n_positions
    for name, path in tasks.items():
        code, out, _ = run_cli(
            capsys, "eval", "--checkpoint", root / "ckpt", "--task", path, "--shots", shots, "--json"
        )
        assert code == 0
        ours = json.loads(out)
        task = load_task(path)
        correct = []
        for i, (ex, row) in enumerate(zip(task.examples, ours["examples"], strict=True)):
            context = few_shot_context(task, i, shots, seed=0)
            theirs = [_reference(model, tokenizer, context, c, n_ctx) for c in ex.choices]
            lls = [ll for ll, _ in theirs]
            if name == "choices":
                assert row["loglikelihoods"] == pytest.approx(lls, abs=1e-3)
                assert row["pred"] == int(np.argmax(lls))
                correct.append(int(np.argmax(lls)) == ex.gold)
            else:
                assert row["loglikelihoods"] == pytest.approx(lls[0], abs=1e-3)
                assert row["pred"] == theirs[0][1]
                assert row["correct"] == (theirs[0][1] == ex.answer)
                correct.append(theirs[0][1] == ex.answer)
        assert ours["accuracy"] == pytest.approx(np.mean(correct))


# --- during training -------------------------------------------------------------------------


def _tensorboard_scalars(workdir: Path) -> dict[str, dict[int, float]]:
    """Scalars of the TensorBoard event files in ``workdir`` (TFRecord framing, Event protos)."""
    from tensorboardX.proto.event_pb2 import Event

    out: dict[str, dict[int, float]] = {}
    for path in workdir.glob("events.out.tfevents.*"):
        data, at = path.read_bytes(), 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at : at + 8])
            event = Event.FromString(data[at + 12 : at + 12 + length])
            at += 16 + length
            for v in event.summary.value:
                out.setdefault(v.tag, {})[event.step] = v.simple_value
    return out


@pytest.mark.slow
def test_training_logs_task_accuracy(gpt2_style_tokenizer: Path, tasks, tmp_path: Path) -> None:
    """``train.eval_tasks``: every eval logs each task's accuracy (and accuracy_norm or
    loglikelihood) to metrics.jsonl and TensorBoard, the numbers ``evaluate`` gives for the
    checkpoint saved at that step."""
    from gpt3_jax.config import load_config
    from gpt3_jax.evaluation import evaluate
    from gpt3_jax.sampling import load
    from gpt3_jax.training.loop import train
    from gpt3_jax.training.metrics import read_metrics

    text = tmp_path / "text.txt"
    text.write_text("Now is the winter of our discontent\nMade glorious summer by this sun of York;\n" * 60)
    cfg = load_config(
        ROOT / "configs" / "tiny.yaml",
        [
            *(f"model.{k}={v}" for k, v in SHAPE.items()),
            f"data.tokenizer={gpt2_style_tokenizer / 'tokenizer.json'}",
            f"data.input=[{text}]",
            "data.val_fraction=0.1",
            f"run.workdir={tmp_path / 'run'}",
            "train.steps=2",
            "train.batch_size=8",
            "train.log_every=1",
            "train.eval_every=2",
            "train.eval_batches=1",
            "train.sample_tokens=0",
            f"train.eval_tasks=[{tasks['choices']}, {tasks['completion']}]",
            "checkpoint.every=2",
        ],
    )
    train(cfg, progress=False)
    (record,) = [r for r in read_metrics(tmp_path / "run") if "eval_choices_accuracy" in r]
    assert record["step"] == 2
    keys = ("eval_choices_accuracy", "eval_choices_accuracy_norm", "eval_completion_accuracy")
    keys += ("eval_completion_loglikelihood",)
    lm = load(tmp_path / "run")
    choices, completion = evaluate(lm, tasks["choices"]), evaluate(lm, tasks["completion"])
    expected = (choices.accuracy, choices.accuracy_norm, completion.accuracy, completion.loglikelihood)
    assert [record[k] for k in keys] == pytest.approx(expected, abs=1e-5)
    scalars = _tensorboard_scalars(tmp_path / "run")
    assert [scalars[k][2] for k in keys] == pytest.approx([record[k] for k in keys], abs=1e-6)


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "train.eval_tasks=[{choices}]",
            "train.eval_tasks: are scored at every eval: set train.eval_every too",
        ),
        ("train.eval_tasks=[{choices}, {choices}]", "two task files are named 'choices'"),
        ("train.eval_tasks=[{missing}]", "not found"),
    ],
)
def test_bad_eval_tasks_stop_training_before_it_starts(tasks, tmp_path: Path, override, message) -> None:
    from gpt3_jax.config import load_config
    from gpt3_jax.training.loop import train

    override = override.format(choices=tasks["choices"], missing=tmp_path / "missing.jsonl")
    every = [] if "eval_every" in message else ["train.eval_every=1"]
    with pytest.raises(UserError, match=message):
        cfg = load_config(None, [f"run.workdir={tmp_path}", "data.max_corpus_bytes=20000", override, *every])
        train(cfg, progress=False)
    assert not (tmp_path / "checkpoints").exists()


# --- the shipped task files --------------------------------------------------------------------


def test_shipped_tasks_are_what_make_tasks_writes(tmp_path: Path) -> None:
    """benchmarks/tasks/*.jsonl are the generator's output, load as tasks of 50-200 examples, and
    in python_syntax exactly the gold continuation makes valid Python."""
    import importlib.util

    from gpt3_jax.evaluation import COMPLETION, MULTIPLE_CHOICE, load_task

    folder = ROOT / "benchmarks" / "tasks"
    spec = importlib.util.spec_from_file_location("make_tasks", folder / "make_tasks.py")
    make_tasks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_tasks)
    written = make_tasks.write(tmp_path)
    assert sorted(p.name for p in written) == sorted(p.name for p in folder.glob("*.jsonl"))
    kinds = {}
    for path in written:
        assert path.read_bytes() == (folder / path.name).read_bytes(), f"rerun {folder / 'make_tasks.py'}"
        task = load_task(folder / path.name)
        assert 50 <= len(task) <= 200
        kinds[task.name] = task.kind
    assert kinds == {
        "word_order": MULTIPLE_CHOICE,
        "arithmetic": COMPLETION,
        "python_syntax": MULTIPLE_CHOICE,
    }

    for ex in load_task(folder / "python_syntax.jsonl").examples:
        valid = [make_tasks.compiles(ex.context + c) for c in ex.choices]
        assert valid == [i == ex.gold for i in range(len(ex.choices))]


@pytest.mark.slow
def test_every_process_scores_the_same(ckpt: Path, tasks, tmp_path: Path) -> None:
    """2 processes × 2 devices, the parameters sharded over a mesh that spans both: each process
    runs the same batches and gets the numbers of one process alone (what training relies on)."""
    from test_multihost import _env, _finish, _local, _script

    from gpt3_jax.evaluation import evaluate
    from gpt3_jax.sampling import load

    worker = _script(
        tmp_path,
        f"""
        import json, jax
        from gpt3_jax.config import MeshConfig
        from gpt3_jax.evaluation import evaluate
        from gpt3_jax.sampling import load
        from gpt3_jax.sharding import make_mesh
        lm = load({str(ckpt)!r}, mesh=make_mesh(MeshConfig(data=2, fsdp=2)))
        result = evaluate(lm, {str(tasks["choices"])!r}, shots=2)
        print("RESULT", json.dumps([e.loglikelihoods for e in result.examples]), flush=True)
        """,
    )
    rc, out = _finish(_local(2, 2, ["worker"], _env(tmp_path, GPT3_JAX=worker)), timeout=240)
    assert rc == 0, out
    expected = [e.loglikelihoods for e in evaluate(load(ckpt), tasks["choices"], shots=2).examples]
    for log in (out, (tmp_path / "logs" / "process_1.log").read_text()):
        (line,) = [x for x in log.splitlines() if x.startswith("RESULT ")]
        got = json.loads(line.removeprefix("RESULT "))
        assert [ll for row in got for ll in row] == pytest.approx(
            [ll for row in expected for ll in row], abs=1e-4
        )


def test_docs_list_the_json_keys(ckpt: Path, tasks) -> None:
    """docs/evaluation.md's table of ``--json`` keys is what the two kinds of task print."""
    import re

    from gpt3_jax.evaluation import evaluate
    from gpt3_jax.sampling import load

    doc = (ROOT / "docs" / "evaluation.md").read_text()
    table = doc[doc.index("| key |") : doc.index("`--batch-size B`")]
    documented = set(re.findall(r"`(\w+)`", table))
    lm = load(ckpt)
    printed = set()
    for path in tasks.values():
        result = evaluate(lm, path).to_json()
        printed |= set(result) | set(result["examples"][0])
    assert documented - {"multiple_choice", "completion"} == printed
