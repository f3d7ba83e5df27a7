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


def add_host_memory_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--plain-host-memory",
        action="store_true",
        help="on a CPU backend, leave the allocator and JAX's dispatch as they are: memory goes back "
        "to the system after each step, and each step faults it in again (slower; default: kept, "
        "see gpt3_jax/hostmem.py)",
    )


def program_settings(args: argparse.Namespace) -> None:
    """For the commands that run models, when ``gpt3-jax`` runs as the program (not ``main`` called
    from Python, whose process is the caller's to configure): the persistent compilation cache
    (``gpt3_jax.compile_cache``) and, unless ``--plain-host-memory`` is given, XLA:CPU's working
    memory kept between executions (``gpt3_jax.hostmem``). Call it before the first device use
    (after ``distributed.initialize``)."""
    if not getattr(args, "own_process", False):
        return
    from gpt3_jax.compile_cache import use_compilation_cache

    use_compilation_cache()
    if not args.plain_host_memory:
        from gpt3_jax.hostmem import keep_cpu_buffers as keep

        keep()
