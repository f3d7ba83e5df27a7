"""``gpt3-jax sample``: continue a prompt from a checkpoint, streaming tokens as they come."""

from __future__ import annotations

import argparse
import json
import sys

from gpt3_jax.cli.common import add_host_memory_arg, program_settings


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sample",
        help="generate text from a checkpoint (greedy, temperature, top-k, top-p)",
        description="Prefill the prompt in one pass, then decode with a KV cache inside one jitted "
        "loop. Text streams to the terminal as it is produced; --json prints ids, text and speed.",
    )
    parser.add_argument(
        "--checkpoint", required=True, metavar="DIR", help="run workdir or checkpoint dir (local or gs://)"
    )
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", metavar="TEXT", help="prompt text")
    src.add_argument("--prompt-file", metavar="F", help="file holding the prompt text")
    src.add_argument("--prompt-ids", metavar="IDS", help="prompt token ids, comma-separated: 1,2,3")
    parser.add_argument("--max-new-tokens", type=int, default=64, metavar="N")
    parser.add_argument("--temperature", type=float, default=1.0, metavar="T", help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=0, metavar="K", help="0 = off")
    parser.add_argument("--top-p", type=float, default=1.0, metavar="P", help="in (0, 1]; 1 = off")
    parser.add_argument("--seed", type=int, default=0, metavar="S")
    parser.add_argument("--num-samples", type=int, default=1, metavar="B", help="samples in one batch")
    parser.add_argument("--stop", nargs="+", default=[], metavar="STR", help="stop at any of these strings")
    parser.add_argument(
        "--tokenizer",
        metavar="TOK",
        help="a SentencePiece .model, a Hugging Face tokenizer.json, or a folder holding one "
        "(default: the checkpoint's)",
    )
    parser.add_argument("--logprobs", action="store_true", help="with --json: log-probability of each id")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of streaming")
    add_host_memory_arg(parser)
    parser.set_defaults(run=run)


def _prompt(args: argparse.Namespace, lm) -> list[int]:
    from gpt3_jax.errors import UserError

    if args.prompt_ids is not None:
        try:
            return [int(x) for x in args.prompt_ids.split(",") if x.strip()]
        except ValueError:
            raise UserError(
                f"--prompt-ids {args.prompt_ids!r} is not comma-separated integers (1,2,3)"
            ) from None
    if args.prompt_file is not None:
        from gpt3_jax import paths

        path = paths.as_path(args.prompt_file)
        if not path.is_file():
            raise UserError(f"prompt file {str(path)!r} not found")
        text = path.read_text()
    else:
        text = args.prompt
    return lm.encode(text) if text else []


def run(args: argparse.Namespace) -> int:
    from gpt3_jax.errors import UserError
    from gpt3_jax.sampling import load, make_method

    method = make_method(args.temperature, args.top_k, args.top_p)  # bad settings fail before loading
    if args.num_samples < 1:
        raise UserError(f"--num-samples must be >= 1, got {args.num_samples}")
    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    program_settings(args)
    lm = load(args.checkpoint, tokenizer=args.tokenizer)
    prompt = _prompt(args, lm)
    lm.sampler.prepare([prompt], args.max_new_tokens)  # empty or too long: fail before compiling
    n_ctx = lm.cfg.model.n_ctx
    if prompt and len(prompt) < n_ctx and len(prompt) + args.max_new_tokens > n_ctx:
        print(
            f"note: the context ({n_ctx}) leaves room for {n_ctx - len(prompt)} new tokens", file=sys.stderr
        )

    stream = not args.json and args.num_samples == 1 and lm.tokenizer is not None
    on_text = (lambda s: print(s, end="", flush=True)) if stream else None
    if not args.json:
        print("compiling and generating...", file=sys.stderr, flush=True)
    out = lm.generate(
        prompt,
        args.max_new_tokens,
        method=method,
        seed=args.seed,
        num_samples=args.num_samples,
        stop=args.stop,
        logprobs=args.logprobs,
        on_text=on_text,
    )
    samples, res = out.completions, out.result
    new_tokens = sum(len(s.ids) for s in samples)
    if args.json:
        out = {
            "samples": [
                {"ids": s.ids, "text": s.text} | ({"logprobs": s.logprobs} if args.logprobs else {})
                for s in samples
            ],
            "prompt_tokens": len(prompt),
            "new_tokens": new_tokens,
            "tokens_per_sec": round(new_tokens / res.seconds, 3) if res.seconds > 0 else 0.0,
            "compile_seconds": round(res.compile_seconds, 3),
        }
        print(json.dumps(out))
        return 0
    if stream:
        print()
    else:
        for i, s in enumerate(samples):
            header = f"--- sample {i} ---\n" if len(samples) > 1 else ""
            print(header + (s.text if lm.tokenizer is not None else " ".join(map(str, s.ids))))
    speed = new_tokens / res.seconds if res.seconds > 0 else 0.0
    print(
        f"[{len(prompt)} prompt tokens, {new_tokens} new tokens in {res.seconds:.2f} s "
        f"({speed:.1f} tokens/s), compile {res.compile_seconds:.1f} s]",
        file=sys.stderr,
    )
    return 0
