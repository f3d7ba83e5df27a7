"""Generation: a jitted KV-cache sampler and the Python API that notebooks use.

    from gpt3_jax.sampling import load, few_shot_prompt
    lm = load("runs/tiny")                                   # or load(path, mesh=make_mesh(...))
    [c] = lm.generate("To be, or not", max_new_tokens=40, temperature=0.8, top_p=0.9, seed=0)
    lm.score("To be, or not to be").perplexity

Modules: ``decode`` (the jitted loop around the model's own forward pass with its KV cache, and
the choice of token), ``methods`` (greedy / temperature / top-k / top-p), ``sampler`` (prompts,
buckets, compile, streaming), ``score`` (log-likelihoods), ``api`` (load/generate/score).
"""

from gpt3_jax.sampling.api import Completion, Generation, LanguageModel, Score, few_shot_prompt, load
from gpt3_jax.sampling.methods import Greedy, Sample, make_method
from gpt3_jax.sampling.sampler import Result, Sampler

__all__ = [
    "Completion",
    "Generation",
    "Greedy",
    "LanguageModel",
    "Result",
    "Sample",
    "Sampler",
    "Score",
    "few_shot_prompt",
    "load",
    "make_method",
]
