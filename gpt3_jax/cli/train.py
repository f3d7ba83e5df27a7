"""``gpt3-jax train CONFIG [section.key=value ...]``: train (or resume) a run in ``run.workdir``."""

from __future__ import annotations

import argparse
import sys

from gpt3_jax import distributed
from gpt3_jax.cli.common import (
    add_config_args,
    add_host_memory_arg,
    config_from_args,
    program_settings,
)

HELP = """\
Trains the config's model in run.workdir. If the workdir holds a checkpoint, the run resumes from
the latest complete one (parameters, optimizer, step, RNG and data position), on whatever mesh
this run has.

Writes: WORKDIR/metrics.jsonl (one JSON line per train.log_every steps and per eval),
TensorBoard events beside it, WORKDIR/checkpoints/<step>/ (every checkpoint.every steps and at
the end), the tokenizer beside them (WORKDIR/checkpoints/tokenizer.model, or tokenizer.json for a
Hugging Face one) and WORKDIR/config.yaml.

Exit codes: 0 done, or stopped by SIGTERM (a preemption: the step finished, a checkpoint was
saved; run the same command again to continue); 130 stopped by SIGINT (Ctrl-C; saved likewise;
press it twice to stop without saving); 2 bad config or input; 3 the loss became NaN/Inf (the
last checkpoint on disk is from before it); 4 a checkpoint could not be written (a full disk, a
file-size limit: that save failed, the older checkpoints are intact; fix it and run the same
command again). A damaged latest checkpoint (a file truncated, deleted or changed) is reported in
one warning line and the previous complete one is used.

Examples:
  gpt3-jax train configs/tiny.yaml run.workdir=/tmp/tiny
  gpt3-jax train configs/shakespeare-char.yaml
  gpt3-jax convert from-hf path/to/gpt2 runs/gpt2      # transformers' GPT-2 small, with its tokenizer
  gpt3-jax train configs/gpt3-small.yaml train.init_from=runs/gpt2 model.n_ctx=1024 \\
    model.attention_pattern=[dense] data.input=[my_text.txt] optim.lr=6e-5 optim.warmup_tokens=0 \\
    optim.ramp_tokens=0 train.steps=1000 train.batch_size=8 train.micro_batches=1 run.workdir=runs/ft
  (fine-tuning GPT-2 small: GPT-3 Small's shape with GPT-2's 1024-token context and dense attention;
  the data is tokenized with GPT-2's tokenizer, which the converted checkpoint carries)
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a model (resumes from the workdir's latest checkpoint)",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (log lines only)")
    distributed.add_arguments(parser)
    add_host_memory_arg(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    distributed.initialize(args.coordinator, args.num_processes, args.process_id)  # before any JAX device use
    program_settings(args)
    from gpt3_jax.checkpoint import SaveError
    from gpt3_jax.training.loop import DivergedError, train

    cfg = config_from_args(args)
    try:
        summary = train(cfg, progress=not args.no_progress)
    except DivergedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except SaveError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 4
    return 130 if summary["stopped_by"] == "SIGINT" else 0
