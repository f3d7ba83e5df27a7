"""Data: tokenizers (SentencePiece or Hugging Face), prepared token streams, grain training batches.

    tok = train_tokenizer(["input.txt"], 8192, "runs/tok")           # or load_tokenizer(path)
    data = prepare_training_data(cfg, workdir)                        # cached; trains a tokenizer if needed
    it = train_iterator(data, batch_size=8, seq_len=1024, seed=0)     # endless, shuffled, resumable
    batch = to_device(next(it), mesh)                                 # {"inputs", "targets"}: [b, t]

Importing this package is cheap: grain and JAX are imported only when batches are built.
"""

from gpt3_jax.data.cache import prepare_training_data
from gpt3_jax.data.corpus import corpus_files
from gpt3_jax.data.pipeline import TrainIterator, Windows, eval_batches, to_device, train_iterator
from gpt3_jax.data.prepare import prepare_data
from gpt3_jax.data.prepared import PreparedData, TokenStream
from gpt3_jax.data.sources import list_inputs
from gpt3_jax.data.tokenizer import Tokenizer, load_tokenizer
from gpt3_jax.data.tokenizer_hf import HFTokenizer
from gpt3_jax.data.tokenizer_spm import SentencePieceTokenizer, train_tokenizer

__all__ = [
    "HFTokenizer",
    "PreparedData",
    "SentencePieceTokenizer",
    "TokenStream",
    "Tokenizer",
    "TrainIterator",
    "Windows",
    "corpus_files",
    "eval_batches",
    "list_inputs",
    "load_tokenizer",
    "prepare_data",
    "prepare_training_data",
    "to_device",
    "train_iterator",
    "train_tokenizer",
]
