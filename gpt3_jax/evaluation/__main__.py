"""``python -m gpt3_jax.evaluation ARGS`` = ``lm_eval ARGS`` with our model registered as ``gpt3_jax``
(needs the ``eval`` extra; see ``gpt3_jax.evaluation.harness``)."""

import sys

from gpt3_jax.evaluation.harness import main

sys.exit(main())
