"""Arguments shared by subcommands: a config file plus ``section.key=value`` overrides."""

from __future__ import annotations

import argparse

from gpt3_jax.config import Config


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", metavar="CONFIG", help="YAML config, e.g. configs/gpt3-small.yaml")
    parser.add_argument(
        "overrides", metavar="section.key=value", nargs="*", help="overrides, e.g. train.steps=100"
    )


def config_from_args(args: argparse.Namespace) -> Config:
    from gpt3_jax.config import load_config

    return load_config(args.config, args.overrides)
