"""A GPT-2 small with random weights and a Hugging Face tokenizer, saved as ``save_pretrained`` writes
it: the stand-in for a converted GPT-2 checkpoint where none can be downloaded (docs/evaluation.md).

    python benchmarks/random_gpt2.py runs/random-gpt2-hf        # needs the compare extra
    gpt3-jax convert from-hf runs/random-gpt2-hf runs/random-gpt2

The model is ``GPT2LMHeadModel(GPT2Config())`` (124M parameters, 1024 positions) initialised with
seed 0; the tokenizer is a byte-level BPE of 8192 ids trained here, with the ``tokenizers``
library, on tiny Shakespeare and the Python standard library's source (GPT-2's own needs a
download). It scores at chance: it is a check of the pipeline, not of a model.
"""

from __future__ import annotations

import argparse
import sysconfig
from pathlib import Path


def tokenizer(vocab_size: int = 8192):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    from gpt3_jax.data.corpus import SHAKESPEARE

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    python = [p.read_text(errors="replace") for p in sorted(stdlib.glob("*.py"))[:200]]
    tok.train_from_iterator([SHAKESPEARE.read_text(encoding="utf-8"), *python], trainer)
    return tok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to write (config.json, model.safetensors, tokenizer)")
    args = parser.parse_args()

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    tok = tokenizer()
    eot = tok.token_to_id("<|endoftext|>")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(bos_token_id=eot, eos_token_id=eot)).eval()
    model.save_pretrained(args.out)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    fast.save_pretrained(args.out)
    print(f"wrote {args.out}: GPT-2 small, random weights (seed 0), a {tok.get_vocab_size()}-id BPE")


if __name__ == "__main__":
    main()
