"""``gpt3-jax convert from-hf|to-hf``: Hugging Face GPT-2 weights in and out."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert weights between Hugging Face GPT-2 and gpt3_jax checkpoints",
        description="GPT-2 is GPT-3 with dense attention everywhere, so its public weights convert "
        "both ways. Safetensors are read and written with numpy; torch is needed only for a "
        "pytorch_model.bin. Every folder may be local or a gs:// URL.",
    )
    sub = parser.add_subparsers(dest="direction", metavar="DIRECTION", required=True)
    p = sub.add_parser(
        "from-hf",
        help="a transformers GPT2LMHeadModel directory → a gpt3_jax checkpoint",
        description="Reads config.json and model.safetensors (or pytorch_model.bin) and writes a "
        "params-only checkpoint with attention pattern [dense] that sample, eval and train.init_from "
        "accept. The vocabulary rows added by padding are zeros. The folder's tokenizer "
        "(tokenizer.json, or vocab.json + merges.txt: GPT-2's byte-level BPE) is stored with the "
        "checkpoint as tokenizer.json, so text prompts and fine-tuning data use GPT-2's own ids.",
    )
    p.add_argument("hf_dir", metavar="HF_DIR", help="directory written by save_pretrained")
    p.add_argument("out_dir", metavar="OUT_DIR", help="new checkpoint directory (must not hold files)")
    p.set_defaults(run=run_from_hf)
    p = sub.add_parser(
        "to-hf",
        help="a gpt3_jax checkpoint (all-dense attention) → config.json + model.safetensors",
        description="Writes a directory that transformers.GPT2LMHeadModel.from_pretrained loads. "
        "Only models whose attention pattern is all dense are GPT-2 models. A Hugging Face "
        "tokenizer stored with the checkpoint is written back (tokenizer.json, "
        "tokenizer_config.json: AutoTokenizer.from_pretrained loads it); a SentencePiece one is "
        "not converted.",
    )
    p.add_argument("checkpoint", metavar="CKPT_DIR", help="a run's workdir, checkpoint root or step folder")
    p.add_argument("out_dir", metavar="OUT_DIR", help="output directory (config.json, model.safetensors)")
    p.set_defaults(run=run_to_hf)


def run_from_hf(args: argparse.Namespace) -> int:
    import jax
    from flax import nnx

    from gpt3_jax import checkpoint, convert, paths
    from gpt3_jax.errors import UserError
    from gpt3_jax.info import human

    out = paths.as_path(args.out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{str(out)!r} already exists and is not empty; choose a new OUT_DIR")
    cfg, model = convert.from_hf(args.hf_dir)
    tokenizer = convert.hf_tokenizer(args.hf_dir, cfg.model)  # a broken one fails before writing
    params = nnx.state(model, nnx.Param)
    root = checkpoint.save_params(out, cfg, params, tokenizer=tokenizer)
    m = cfg.model
    n = sum(x.size for x in jax.tree.leaves(params))
    print(
        f"wrote {root}: GPT-2 {m.n_layer} layers, d_model {m.d_model}, {m.n_head} heads, context "
        f"{m.n_ctx}, vocab {m.vocab_size} (padded to {m.padded_vocab} with zero rows), {human(n)} params"
    )
    if tokenizer is not None:
        print(
            f"tokenizer: {tokenizer.path} → {root / tokenizer.file_name} ({tokenizer.vocab_size} tokens, "
            f"end of text {tokenizer.eot_id})"
        )
    else:
        print(
            "note: no tokenizer in HF_DIR (tokenizer.json, or vocab.json + merges.txt); for text "
            "prompts pass --tokenizer, or give token ids with --prompt-ids"
        )
    return 0


def run_to_hf(args: argparse.Namespace) -> int:
    from gpt3_jax import checkpoint, convert, paths
    from gpt3_jax.data.tokenizer_hf import HF_FILE
    from gpt3_jax.errors import UserError

    out = paths.as_path(args.out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{str(out)!r} already exists and is not empty; choose a new OUT_DIR")
    cfg, out = convert.checkpoint_to_hf(args.checkpoint, args.out_dir)
    m = cfg.model
    print(
        f"wrote {out}/config.json and model.safetensors: GPT2LMHeadModel, {m.n_layer} layers, "
        f"d_model {m.d_model}, vocab {m.vocab_size}; load with "
        f"transformers.GPT2LMHeadModel.from_pretrained({str(out)!r})"
    )
    tok = checkpoint.tokenizer_path(args.checkpoint)
    if tok is not None and tok.name == HF_FILE:
        print(f"wrote the tokenizer: transformers.AutoTokenizer.from_pretrained({str(out)!r})")
    elif tok is not None:
        print("note: the checkpoint's SentencePiece tokenizer is not converted (GPT-2 tokenizers are BPE)")
    return 0
