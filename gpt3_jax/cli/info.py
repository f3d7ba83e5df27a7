"""``gpt3-jax info CONFIG [overrides] [--json]``: parameters and training FLOPs of a config's model."""

from __future__ import annotations

import argparse
import json

from gpt3_jax.cli.common import add_config_args, config_from_args

HELP = """\
Counts the parameters of the config's model from its abstract shapes (nnx.eval_shape; nothing is
allocated) and estimates training FLOPs per token.

  non-embedding params = all parameters except the token and position embeddings (Kaplan et al.);
                         the unembedding is tied to the token embedding.
  FLOPs/token          = 6 * (block matmul weights + padded_vocab * d_model)
                         + per dense layer 6*T*d  (12*d*k, k = T/2 keys per query on average)
                         + per local layer 12*d*(w - w^2/(2T)), w = min(local_window, T)
                         (T = n_ctx; biases, norms, softmax and GELU left out)
"""

LABELS = {
    "token_embedding": "token embedding (wte, tied unembedding)",
    "position_embedding": "position embedding (wpe)",
    "attention_qkv": "attention qkv (c_attn_w)",
    "attention_out": "attention out (c_proj_w)",
    "mlp_in": "mlp in (c_fc_w)",
    "mlp_out": "mlp out (c_proj_w)",
    "norms_and_biases": "layer norms + biases",
}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "info",
        help="parameter count and training FLOPs per token of a config's model",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from gpt3_jax.info import count, human

    cfg = config_from_args(args)
    info = count(cfg.model)
    if args.json:
        print(json.dumps(info.to_dict(), indent=2))
        return 0
    m = cfg.model
    types = ", ".join(f"{n} {kind}" for kind, n in info.layer_types.items())
    print(f"{args.config}: {m.n_layer} layers ({types}), d_model {m.d_model}, {m.n_head} heads × {m.d_head}")
    print(
        f"  context {m.n_ctx}, local window {m.local_window}, vocab {m.vocab_size} (padded {m.padded_vocab})"
    )
    print(f"  parameters            {info.params:>17,}  ({human(info.params)})")
    print(f"  non-embedding         {info.non_embedding_params:>17,}  ({human(info.non_embedding_params)})")
    print(f"  training FLOPs/token  {info.flops_per_token:>17,.0f}  ({human(info.flops_per_token)})")
    print(
        f"    of which attention  {info.attention_flops_per_token:>17,.0f}  "
        f"(as {info.attention_impl} computes it)"
    )
    print(
        f"  model FLOPs/token     {info.model_flops_per_token:>17,.0f}  "
        f"({human(info.model_flops_per_token)}; the causal band only, what MFU counts)"
    )
    print("  breakdown:")
    for kind, n in info.breakdown.items():
        print(f"    {LABELS[kind]:<40} {n:>16,}  {100 * n / info.params:5.1f}%")
    return 0
