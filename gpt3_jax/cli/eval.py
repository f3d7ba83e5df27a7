"""``gpt3-jax eval``: loss and perplexity of a checkpoint on text files or its run's validation data,
or its accuracy on a task file at K shots (``--task``, docs/evaluation.md)."""

from __future__ import annotations

import argparse
import json
import math
import sys

from gpt3_jax.cli.common import add_host_memory_arg, program_settings


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="loss and perplexity of a checkpoint on a data set, or accuracy on a task",
        description="Tokenizes --input (text files, folders, JSONL) with the checkpoint's tokenizer, "
        "joins documents with end-of-text, and scores windows of the model's context. Without "
        "--input, scores the validation split of the data the checkpoint's run trained on. "
        "With --task, the accuracy on a task file (JSON lines of multiple-choice or completion "
        "examples) at --shots K shots, as the GPT-3 paper measures it (docs/evaluation.md).",
    )
    parser.add_argument(
        "--checkpoint", required=True, metavar="DIR", help="run workdir or checkpoint dir (local or gs://)"
    )
    parser.add_argument(
        "--input", nargs="+", metavar="PATH", help="text files, folders or JSONL(.gz), local or gs://"
    )
    parser.add_argument(
        "--task",
        metavar="FILE",
        help='a task file, one JSON example per line: {"context", "choices", "gold"} (multiple choice) '
        'or {"context", "completion"}',
    )
    parser.add_argument(
        "--shots", type=int, default=0, metavar="K", help="--task: solved examples before each (default 0)"
    )
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="--task: which examples are shots")
    parser.add_argument(
        "--tokenizer",
        metavar="TOK",
        help="a SentencePiece .model, a Hugging Face tokenizer.json, or a folder holding one "
        "(default: the checkpoint's)",
    )
    parser.add_argument("--seq-len", type=int, default=0, metavar="T", help="window length; 0 = n_ctx")
    parser.add_argument("--batch-size", type=int, default=8, metavar="B", help="rows per batch (default 8)")
    parser.add_argument("--max-batches", type=int, default=0, metavar="N", help="0 = all")
    parser.add_argument(
        "--json",
        action="store_true",
        help="print {loss, perplexity, tokens} as JSON; with --task, the scores and every example's",
    )
    add_host_memory_arg(parser)
    parser.set_defaults(run=run)


def _input_ids(lm, paths: list[str]):
    """End of text, then each document's ids (a big document arrives in pieces), as in training."""
    import numpy as np
    from tqdm import tqdm

    from gpt3_jax.data.sources import iter_pieces, list_inputs

    files = list_inputs(paths)
    ids: list[int] = []
    starts = True
    with tqdm(
        total=sum(f.size for f in files),
        desc="tokenizing",
        unit="B",
        unit_scale=True,
        file=sys.stderr,
        disable=not sys.stderr.isatty(),  # bars only on a terminal: in a log they would sit above an error
    ) as bar:
        for piece in iter_pieces(files):
            ids += [lm.eot_id, *lm.encode(piece.text)] if starts else lm.encode(piece.text)
            starts = piece.end
            bar.update(min(piece.n_bytes, bar.total - bar.n))
    return np.asarray(ids, np.int64)


def _validation_ids(lm, checkpoint: str):
    """The validation split of the data the checkpoint's run was trained on (prepared, cached)."""
    from gpt3_jax import paths
    from gpt3_jax.checkpoint import resolve
    from gpt3_jax.data import prepare_training_data

    root, _ = resolve(checkpoint)
    workdir = root.parent if root.name == "checkpoints" else paths.as_path(lm.cfg.run.workdir)
    stream = prepare_training_data(lm.cfg, workdir).val_stream()
    return stream.read(0, len(stream))


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from gpt3_jax.errors import UserError
    from gpt3_jax.sampling import load

    if args.batch_size < 1 or args.max_batches < 0 or args.seq_len < 0:
        raise UserError("--batch-size must be >= 1, --max-batches and --seq-len >= 0")
    program_settings(args)
    if args.task:
        return _run_task(args)
    lm = load(args.checkpoint, tokenizer=args.tokenizer)
    if lm.tokenizer is None:
        raise UserError("the checkpoint has no tokenizer; pass --tokenizer TOK")
    seq_len = args.seq_len or lm.cfg.model.n_ctx
    if seq_len > lm.cfg.model.n_ctx:
        raise UserError(f"--seq-len {seq_len} exceeds the model's context {lm.cfg.model.n_ctx}")
    ids = _input_ids(lm, args.input) if args.input else _validation_ids(lm, args.checkpoint)
    if len(ids) < 2:
        raise UserError("the data holds fewer than two tokens; nothing to score")
    rows = -(-(len(ids) - 1) // seq_len)
    n_batches = -(-rows // args.batch_size)
    n_batches = min(n_batches, args.max_batches) if args.max_batches else n_batches
    total, count = 0.0, 0
    batches = lm.logprobs_batches(ids, batch_size=args.batch_size, seq_len=seq_len, max_batches=n_batches)
    for logp, mask in tqdm(batches, total=n_batches, desc="eval", unit="batch", file=sys.stderr):
        total += float(logp[mask].sum())
        count += int(mask.sum())
    loss = -total / count
    result = {"loss": loss, "perplexity": math.exp(loss), "tokens": count}
    print(
        json.dumps(result)
        if args.json
        else f"loss {loss:.4f}  perplexity {math.exp(loss):.3f}  tokens {count}"
    )
    return 0


def _run_task(args: argparse.Namespace) -> int:
    """``--task``: accuracy at --shots K shots; the task file is checked before the model loads."""
    from gpt3_jax.errors import UserError
    from gpt3_jax.evaluation import evaluate, load_task, shot_indices
    from gpt3_jax.sampling import load

    if args.input:
        raise UserError("give --task or --input, not both")
    task = load_task(args.task)
    shot_indices(len(task), 0, args.shots, args.seed)  # enough examples for K shots?
    lm = load(args.checkpoint, tokenizer=args.tokenizer)
    if lm.tokenizer is None:
        raise UserError("the checkpoint has no tokenizer; pass --tokenizer TOK")
    result = evaluate(lm, task, shots=args.shots, seed=args.seed, batch_size=args.batch_size, progress=True)
    if args.json:
        print(json.dumps(result.to_json()))
        return 0
    line = f"{task.name}: {args.shots}-shot, n {result.n}, "
    line += f"accuracy {result.accuracy:.4f} ± {result.accuracy_stderr:.4f}"
    if result.accuracy_norm is not None:
        line += f", accuracy_norm {result.accuracy_norm:.4f}"
    if result.loglikelihood is not None:
        line += f", loglikelihood {result.loglikelihood:.4f}"
    print(line)
    return 0
