"""Run configuration: frozen dataclasses, YAML presets, ``section.key=value`` overrides.

A preset holds only its differences from the defaults below. OmegaConf does the merging and the
type checks; this module turns its errors into one line naming the key and the fix, and adds the
checks that no type system knows (heads dividing d_model, sizes > 0).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gpt3_jax import paths
from gpt3_jax.errors import UserError

ATTENTION_TYPES = ("dense", "local")
REMAT_POLICIES = ("none", "full", "save_dots")
ATTENTION_IMPLS = ("auto", "xla", "blockwise", "cudnn", "splash")
DTYPES = ("auto", "float32", "bfloat16", "float16")
TRACKERS = ("tensorboard", "wandb")
WORKDIR_PLACEHOLDER = "gs://YOUR_BUCKET/"  # presets for pods start run.workdir with it: it must be set


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise UserError(f"{key}: {message}")


@dataclass(frozen=True)
class ModelConfig:
    """The decoder's shape. GPT-3 Small by default (Table 2.1 of the paper)."""

    n_layer: int = 12
    d_model: int = 768
    n_head: int = 12
    n_ctx: int = 2048
    vocab_size: int = 50257
    vocab_multiple: int = 128  # the embedding is padded up to a multiple of this, for speed
    attention_pattern: tuple[str, ...] = ("dense", "local")  # repeats over the layers
    local_window: int = 256  # a local layer's query sees this many positions, itself included
    dtype: str = "auto"  # compute dtype; auto = bfloat16 on accelerators, float32 on CPU
    scan_layers: bool = True
    remat: str = "none"
    attention_impl: str = "auto"  # auto | xla | blockwise | cudnn | splash (docs/performance.md)
    attention_block: int = 512  # most positions in a blockwise block (attention.query_block); splash block
    dropout: float = 0.0
    init_std: float = 0.02
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for key in ("n_layer", "d_model", "n_head", "n_ctx", "vocab_size", "vocab_multiple"):
            _require(getattr(self, key) > 0, f"model.{key}", "must be a positive integer")
        _require(
            self.d_model % self.n_head == 0,
            "model.n_head",
            f"{self.n_head} heads do not divide d_model={self.d_model}; pick a divisor of d_model",
        )
        _require(len(self.attention_pattern) > 0, "model.attention_pattern", "must not be empty")
        for kind in self.attention_pattern:
            _require(
                kind in ATTENTION_TYPES,
                "model.attention_pattern",
                f"unknown attention type {kind!r}; use entries from {list(ATTENTION_TYPES)}",
            )
        _require(
            self.n_layer % len(self.attention_pattern) == 0,
            "model.n_layer",
            f"{self.n_layer} layers are not a whole number of repeats of the attention pattern "
            f"{list(self.attention_pattern)}; use a multiple of {len(self.attention_pattern)}",
        )
        _require(self.local_window > 0, "model.local_window", "must be a positive integer")
        _require(self.dtype in DTYPES, "model.dtype", f"must be one of {list(DTYPES)}")
        _require(self.remat in REMAT_POLICIES, "model.remat", f"must be one of {list(REMAT_POLICIES)}")
        _require(
            self.attention_impl in ATTENTION_IMPLS,
            "model.attention_impl",
            f"must be one of {list(ATTENTION_IMPLS)}",
        )
        _require(self.attention_block > 0, "model.attention_block", "must be a positive integer")
        _require(0.0 <= self.dropout < 1.0, "model.dropout", "must be in [0, 1)")
        _require(self.init_std > 0, "model.init_std", "must be positive")

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_head

    @property
    def d_ff(self) -> int:
        return 4 * self.d_model

    @property
    def padded_vocab(self) -> int:
        return math.ceil(self.vocab_size / self.vocab_multiple) * self.vocab_multiple

    @property
    def n_groups(self) -> int:
        """How many times the attention pattern repeats: the length of the scanned stack."""
        return self.n_layer // len(self.attention_pattern)

    def layer_slot(self, layer: int) -> tuple[int, int]:
        """Layer index → (group, position in the attention pattern): the layers run group by group,
        each group one repeat of the pattern."""
        return divmod(layer, len(self.attention_pattern))

    def layer_types(self) -> list[str]:
        """The attention kind of every layer, in order."""
        return [self.attention_pattern[self.layer_slot(i)[1]] for i in range(self.n_layer)]


@dataclass(frozen=True)
class DataConfig:
    """Where training text comes from and how it becomes token windows."""

    corpus: str = "stdlib"  # embedded corpus used when `input` is empty: stdlib | shakespeare
    input: tuple[str, ...] = ()  # text files, folders, JSONL(.gz); overrides `corpus`
    tokenizer: str = ""  # SentencePiece .model, HF tokenizer.json or a folder; empty = train one (cached)
    tokenizer_type: str = "bpe"  # bpe | unigram | char, when a tokenizer is trained
    vocab_size: int = 0  # tokenizer size to train; 0 = model.vocab_size
    val_fraction: float = 0.01  # tail of the token stream held out for eval
    cache_dir: str = ""  # where prepared data is cached; empty = <workdir>/data
    workers: int = 0  # grain worker processes; 0 = in the main process
    prefetch: int = 2  # batches prefetched per worker
    max_corpus_bytes: int = 0  # cap on the embedded corpus size; 0 = all of it

    def __post_init__(self) -> None:
        _require(
            self.tokenizer_type in ("bpe", "unigram", "char"),
            "data.tokenizer_type",
            "must be one of ['bpe', 'unigram', 'char']",
        )
        _require(self.vocab_size >= 0, "data.vocab_size", "must be >= 0 (0 = model.vocab_size)")
        _require(0.0 <= self.val_fraction < 1.0, "data.val_fraction", "must be in [0, 1)")
        _require(self.workers >= 0, "data.workers", "must be >= 0")
        _require(self.prefetch >= 0, "data.prefetch", "must be >= 0")
        _require(self.max_corpus_bytes >= 0, "data.max_corpus_bytes", "must be >= 0")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW and the learning-rate schedule of GPT-3's appendix B; lengths in tokens."""

    lr: float = 6.0e-4
    min_lr_ratio: float = 0.1  # cosine decays to this fraction of the peak, then stays
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1  # matrices only
    grad_clip: float = 1.0  # global norm; 0 = off
    warmup_tokens: float = 375e6
    decay_tokens: float = 260e9
    ramp_start_tokens: float = 32768  # batch-size ramp: first batch, in tokens
    ramp_tokens: float = 0  # batch-size ramp length in tokens; 0 = no ramp

    def __post_init__(self) -> None:
        _require(self.lr > 0, "optim.lr", "must be positive")
        _require(0.0 <= self.min_lr_ratio <= 1.0, "optim.min_lr_ratio", "must be in [0, 1]")
        _require(0.0 <= self.b1 < 1.0, "optim.b1", "must be in [0, 1)")
        _require(0.0 <= self.b2 < 1.0, "optim.b2", "must be in [0, 1)")
        _require(self.eps > 0, "optim.eps", "must be positive")
        _require(self.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
        _require(self.grad_clip >= 0, "optim.grad_clip", "must be >= 0 (0 = off)")
        for key in ("warmup_tokens", "decay_tokens", "ramp_start_tokens", "ramp_tokens"):
            _require(getattr(self, key) >= 0, f"optim.{key}", "must be >= 0")


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000
    batch_size: int = 8  # global, in sequences of model.n_ctx tokens
    micro_batches: int = 1  # gradient accumulation: batch_size is split into this many
    log_every: int = 10
    eval_every: int = 0  # 0 = no evaluation
    eval_batches: int = 8
    eval_tasks: tuple[str, ...] = ()  # task files (docs/evaluation.md) scored 0-shot at every eval
    init_from: str = ""  # fine-tuning: take parameters (only) from this checkpoint
    sample_every: int = 0  # print a sample every N steps; 0 = only at the end
    sample_tokens: int = 64
    profile_steps: tuple[int, ...] = ()  # [start, stop]: a jax.profiler trace of these steps

    def __post_init__(self) -> None:
        for key in ("steps", "batch_size", "micro_batches", "log_every", "eval_batches"):
            _require(getattr(self, key) > 0, f"train.{key}", "must be a positive integer")
        _require(self.eval_every >= 0, "train.eval_every", "must be >= 0 (0 = off)")
        _require(
            self.eval_every > 0 or not self.eval_tasks,
            "train.eval_tasks",
            "are scored at every eval: set train.eval_every too",
        )
        _require(self.sample_every >= 0, "train.sample_every", "must be >= 0")
        _require(self.sample_tokens >= 0, "train.sample_tokens", "must be >= 0")
        _require(
            self.batch_size % self.micro_batches == 0,
            "train.micro_batches",
            f"{self.micro_batches} micro-batches do not divide batch_size={self.batch_size}",
        )
        _require(
            not self.profile_steps
            or (len(self.profile_steps) == 2 and 1 <= self.profile_steps[0] <= self.profile_steps[1]),
            "train.profile_steps",
            f"got {list(self.profile_steps)}; give [start, stop] with 1 <= start <= stop, e.g. [10, 12]",
        )


@dataclass(frozen=True)
class MeshConfig:
    """Device mesh sizes; one of data/fsdp/tensor may be -1 (the remaining devices)."""

    data: int = 1
    fsdp: int = -1
    tensor: int = 1
    dcn_data: int = 1  # data parallelism across slices (multi-slice TPU), outermost
    rules: tuple[tuple[str, ...], ...] = ()  # replaces the default rules table when non-empty

    def __post_init__(self) -> None:
        sizes = {"data": self.data, "fsdp": self.fsdp, "tensor": self.tensor}
        for key, size in sizes.items():
            _require(size == -1 or size > 0, f"mesh.{key}", "must be a positive size or -1")
        _require(
            sum(size == -1 for size in sizes.values()) <= 1,
            "mesh",
            "at most one of mesh.data, mesh.fsdp, mesh.tensor may be -1",
        )
        _require(self.dcn_data > 0, "mesh.dcn_data", "must be a positive integer")
        for rule in self.rules:
            _require(
                len(rule) >= 1,
                "mesh.rules",
                "each rule is [logical_name, mesh_axis...]; an empty rule is not allowed",
            )


@dataclass(frozen=True)
class CheckpointConfig:
    every: int = 500  # save every N steps (and at the end); 0 = only at the end
    keep: int = 3
    async_save: bool = True

    def __post_init__(self) -> None:
        _require(self.every >= 0, "checkpoint.every", "must be >= 0")
        _require(self.keep > 0, "checkpoint.keep", "must be a positive integer")


@dataclass(frozen=True)
class RunConfig:
    workdir: str = "runs/default"  # a local folder or gs://bucket/path (shared by every host on a pod)
    seed: int = 0
    trackers: tuple[str, ...] = ("tensorboard",)  # beside metrics.jsonl: tensorboard, wandb

    def __post_init__(self) -> None:
        for tracker in self.trackers:
            _require(
                tracker in TRACKERS,
                "run.trackers",
                f"unknown tracker {tracker!r}; use entries from {list(TRACKERS)}",
            )
        _require(len(set(self.trackers)) == len(self.trackers), "run.trackers", "lists a tracker twice")

    def require_workdir(self) -> None:
        """A UserError when ``workdir`` is still a preset's placeholder bucket."""
        _require(
            not self.workdir.startswith(WORKDIR_PLACEHOLDER),
            "run.workdir",
            f"{self.workdir} is the preset's placeholder; set run.workdir={WORKDIR_PLACEHOLDER}... to "
            "your bucket (or to a folder every host mounts; a local folder does for one host)",
        )


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    def replace(self, **sections: Any) -> Config:
        return dataclasses.replace(self, **sections)


def _plain(value: Any) -> Any:
    """Tuples to lists, recursively, so a config dict serialises to YAML/JSON cleanly."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _one_line(exc: Exception) -> str:
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(exc, OmegaConfBaseException):
        key = getattr(exc, "full_key", None)
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "not in" in msg and key:
            section = key.split(".")[0]
            known = sorted(f.name for f in dataclasses.fields(Config))
            if "." in key and section in known:
                section_cls = {f.name: f.type for f in dataclasses.fields(Config)}[section]
                cls = globals()[section_cls] if isinstance(section_cls, str) else section_cls
                known = sorted(f.name for f in dataclasses.fields(cls))
                return f"unknown config key {key!r}; known keys in {section!r}: {', '.join(known)}"
            return f"unknown config section {key!r}; known sections: {', '.join(known)}"
        if key:
            return f"{key}: {msg}; fix the value's type in the YAML file or the override"
        return msg
    return str(exc).splitlines()[0]


def _scalars_to_lists(layer: dict[str, Any]) -> dict[str, Any]:
    """A single value given for a list-valued key is a one-item list: ``data.input=a.txt``."""
    sections = {f.name: f.default_factory for f in dataclasses.fields(Config)}
    for section, values in layer.items():
        if section not in sections or not isinstance(values, dict):
            continue
        defaults = sections[section]()
        for key, value in values.items():
            if isinstance(getattr(defaults, key, None), tuple) and isinstance(value, str | int | float):
                values[key] = [value]
    return layer


def load_config(path: paths.PathLike | None = None, overrides: Sequence[str] = ()) -> Config:
    """Defaults, then the YAML file at ``path``, then ``section.key=value`` overrides.

    Raises ``UserError`` (one line) on a missing file, bad YAML, an unknown key, a wrong type or
    an impossible value.
    """
    import yaml
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    layers = [OmegaConf.structured(Config)]
    if path is not None:
        p = paths.as_path(path)
        if not p.is_file():
            raise UserError(f"config file {str(p)!r} not found; pass a YAML file such as configs/tiny.yaml")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            where = getattr(exc, "problem_mark", None)
            line = f" at line {where.line + 1}" if where is not None else ""
            raise UserError(f"{p}: not valid YAML{line}; fix the syntax") from None
        if not isinstance(loaded, dict):
            raise UserError(f"{p}: the top level must be a mapping of sections (model:, train:, ...)")
        layers.append(_scalars_to_lists(loaded))
    for item in overrides:
        key, sep, _ = item.partition("=")
        if not sep or not key or "." not in key:
            raise UserError(f"override {item!r} is not section.key=value (for example train.steps=100)")
    try:
        try:
            dotlist = OmegaConf.to_container(OmegaConf.from_dotlist(list(overrides)))
        except yaml.YAMLError:
            raise UserError(
                f"overrides {' '.join(overrides)!r}: a value is not valid YAML; quote it or fix the brackets"
            ) from None
        merged = OmegaConf.merge(*layers, _scalars_to_lists(dotlist))
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise UserError(_one_line(exc)) from None
    check_window(cfg.model)
    return cfg


def check_window(m: ModelConfig) -> None:
    """A local window wider than the context makes a local layer a dense one: in a config the
    user writes, that is a mistake (a window meant for a longer context), so it is refused. Only
    here, not in ``ModelConfig``: code may build such a model on purpose (a short context for a
    test), and checkpoints stored before this check must still load."""
    _require(
        "local" not in m.attention_pattern or m.local_window <= m.n_ctx,
        "model.local_window",
        f"{m.local_window} is larger than the context model.n_ctx={m.n_ctx}, so the local layers would "
        f"be dense; set model.local_window<={m.n_ctx}, or model.attention_pattern=[dense]",
    )


def dump_config(cfg: Config) -> str:
    import yaml

    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a Config from ``Config.to_dict()`` output (as stored in checkpoints)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), data))
    except OmegaConfBaseException as exc:
        raise UserError(_one_line(exc)) from None
