"""Hugging Face GPT-2 interchange: GPT-2 is GPT-3 with dense attention in every layer.

``from_hf`` reads a ``transformers`` GPT2LMHeadModel directory (``config.json`` and
``model.safetensors``, a sharded ``model.safetensors.index.json``, or ``pytorch_model.bin`` when
torch is installed) and returns our config and a ready ``GPT`` with attention pattern
``["dense"]``; ``hf_tokenizer`` reads the directory's tokenizer (``tokenizer.json``, or
``vocab.json`` + ``merges.txt``), which the checkpoint then carries. ``to_hf`` writes a checkpoint
back as ``config.json`` + ``model.safetensors`` that ``GPT2LMHeadModel.from_pretrained`` loads,
plus, for a Hugging Face tokenizer, the files ``AutoTokenizer.from_pretrained`` loads. Neither
direction needs torch for safetensors. Folders on either side may be ``gs://`` URLs.

The weights are a rename table plus reshapes. GPT-2 stores its linear layers as ``Conv1D`` with
weight [in, out], so no transposes are needed, only splits of fused axes:

    h.i.attn.c_attn.weight [d, 3d]  (q | k | v, each n·h) → attn.c_attn_w [l, d, 3, n, h]
    h.i.attn.c_attn.bias   [3d]                          → attn.c_attn_b [l, 3, n, h]
    h.i.attn.c_proj.weight [d, d]   (rows n·h)           → attn.c_proj_w [l, n, h, d]
    h.i.mlp.c_fc.weight    [d, f]                        → mlp.c_fc_w    [l, d, f]
    h.i.mlp.c_proj.weight  [f, d]                        → mlp.c_proj_w  [l, f, d]
    wte.weight [v, d] → embed.wte [v_padded, d]; the padded rows are zeros (deterministic, never
    an input token; a sampler ignores logits past ``vocab_size``), dropped again by ``to_hf``.

Layer i lives at ``groups.blocks[j]`` with index ``g`` on its leading ``layers`` axis, where
``(g, j) = cfg.layer_slot(i)`` (the stacked layout, as checkpoints store it). GPT-2's
``gelu_new`` is our tanh GELU; lm_head is tied to wte.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np

from gpt3_jax import paths
from gpt3_jax.config import Config, ModelConfig
from gpt3_jax.errors import UserError

if TYPE_CHECKING:
    from gpt3_jax.data.tokenizer import Tokenizer

TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers of old checkpoints


# --- reading a Hugging Face directory --------------------------------------------------------


def read_hf_config(path: paths.PathLike) -> ModelConfig:
    """``config.json`` of a GPT-2 model → our ``ModelConfig`` (pattern ``["dense"]``)."""
    folder = paths.as_path(path)
    file = folder / "config.json"
    if not file.is_file() and _is_our_checkpoint(folder):
        raise UserError(
            f"{folder} is a gpt3_jax checkpoint, not a Hugging Face folder; it needs no conversion: "
            "pass it to sample or eval --checkpoint, or to train.init_from (convert to-hf goes the other way)"
        )
    if not file.is_file():
        raise UserError(
            f"{str(file)!r} not found; pass a Hugging Face GPT-2 directory (save_pretrained output)"
        )
    try:
        hf = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{file}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if hf.get("model_type") != "gpt2":
        raise UserError(
            f"{file}: model_type is {hf.get('model_type')!r}, not 'gpt2'; only GPT-2 checkpoints convert"
        )
    act = hf.get("activation_function", "gelu_new")
    if act not in TANH_GELUS:
        raise UserError(f"{file}: activation_function {act!r} is not the tanh GELU; use one of {TANH_GELUS}")
    d = hf.get("n_embd", 768)
    if hf.get("n_inner") not in (None, 4 * d):
        raise UserError(f"{file}: n_inner={hf['n_inner']} but this model's MLP is 4·n_embd={4 * d} wide")
    for flag, want in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False)):
        if hf.get(flag, want) != want:
            raise UserError(f"{file}: {flag}={hf[flag]} is not supported; only {flag}={want} converts")
    if hf.get("tie_word_embeddings", True) is False:
        raise UserError(f"{file}: tie_word_embeddings is false; this model ties lm_head to wte")
    try:
        return ModelConfig(
            n_layer=hf.get("n_layer", 12),
            d_model=d,
            n_head=hf.get("n_head", 12),
            n_ctx=hf.get("n_positions", hf.get("n_ctx", 1024)),
            vocab_size=hf.get("vocab_size", 50257),
            attention_pattern=("dense",),
            layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            init_std=hf.get("initializer_range", 0.02),
        )
    except UserError as exc:
        raise UserError(f"{file}: {exc}") from None


def _is_our_checkpoint(folder: paths.Path) -> bool:
    """A run's workdir, a checkpoint root (numbered step folders holding ``params``) or one step."""
    if (folder / "checkpoints").is_dir() or (folder / "params").is_dir():
        return True
    return folder.is_dir() and any(c.name.isdigit() and (c / "params").is_dir() for c in folder.iterdir())


def read_hf_weights(path: paths.PathLike) -> dict[str, np.ndarray]:
    """All tensors of a GPT-2 directory as float32 numpy arrays, names without ``transformer.``."""
    path = paths.as_path(path)
    single, index, torch_bin = (
        path / "model.safetensors",
        path / "model.safetensors.index.json",
        path / "pytorch_model.bin",
    )
    if single.is_file() or index.is_file():
        from safetensors.numpy import load_file

        files = (
            [single]
            if single.is_file()
            else sorted({path / f for f in json.loads(index.read_text())["weight_map"].values()})
        )
        tensors = {}
        for f in files:
            try:
                with paths.local_file(f) as local:
                    tensors.update(load_file(local))
            except Exception as exc:  # safetensors raises its own error types
                raise UserError(f"{f}: cannot read safetensors ({exc}); is the download complete?") from None
    elif torch_bin.is_file():
        try:
            import torch
        except ImportError:
            raise UserError(
                f"{torch_bin} needs torch to read; install torch or re-save the model with safetensors"
            ) from None
        tensors = _read_torch_bin(torch, torch_bin)
    else:
        raise UserError(f"{str(path)!r} has no model.safetensors or pytorch_model.bin; nothing to convert")
    out = {}
    for name, value in tensors.items():
        name = name.removeprefix("transformer.")
        if not name.endswith(IGNORED_SUFFIXES):
            out[name] = np.asarray(value, dtype=np.float32)
    return out


def _read_torch_bin(torch: Any, file: paths.Path) -> dict[str, np.ndarray]:
    """The tensors of a ``pytorch_model.bin``, a pickle: read with ``torch.load(weights_only=True)``,
    whose unpickler builds tensors and plain containers only and refuses anything else (a pickle
    that would call a function, such as one that runs a command, is refused, not run)."""
    import pickle  # only for the exception type: the unpickling itself is torch's restricted one

    with paths.local_file(file) as local:
        try:
            state = torch.load(local, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise UserError(
                f"{file}: refused: it holds objects other than tensors, which could run code when "
                "unpickled; re-save the model as safetensors (save_pretrained(..., safe_serialization=True))"
            ) from None
        except Exception as exc:  # a truncated or foreign file: torch raises many kinds
            raise UserError(
                f"{file}: cannot read it as a PyTorch state dict ({type(exc).__name__}); is the download "
                "complete? Or re-save the model as safetensors"
            ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{file}: not a state dict of tensors; re-save the model as safetensors")
    return {k: v.float().numpy() for k, v in state.items()}


def hf_to_params(cfg: ModelConfig, hf: dict[str, np.ndarray]) -> dict[str, Any]:
    """GPT-2 tensors (names without ``transformer.``) → our params pure dict for ``GPT(cfg)``."""
    d, n, h, f, v = cfg.d_model, cfg.n_head, cfg.d_head, cfg.d_ff, cfg.vocab_size

    def take(name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in hf:
            raise UserError(f"tensor {name!r} missing from the Hugging Face weights; is this a GPT-2 model?")
        value = hf.pop(name)
        if value.shape != shape:
            raise UserError(f"tensor {name!r} has shape {value.shape}, config.json implies {shape}")
        return value

    wte = np.zeros((cfg.padded_vocab, d), np.float32)
    wte[:v] = take("wte.weight", (v, d))
    lm_head = hf.pop("lm_head.weight", None)
    if lm_head is not None and not np.array_equal(lm_head, wte[:v]):
        raise UserError("lm_head.weight differs from wte.weight; only tied GPT-2 models convert")

    per_layer = {
        ("ln_1", "scale"): ("ln_1.weight", (d,), (d,)),
        ("ln_1", "bias"): ("ln_1.bias", (d,), (d,)),
        ("attn", "c_attn_w"): ("attn.c_attn.weight", (d, 3 * d), (d, 3, n, h)),
        ("attn", "c_attn_b"): ("attn.c_attn.bias", (3 * d,), (3, n, h)),
        ("attn", "c_proj_w"): ("attn.c_proj.weight", (d, d), (n, h, d)),
        ("attn", "c_proj_b"): ("attn.c_proj.bias", (d,), (d,)),
        ("ln_2", "scale"): ("ln_2.weight", (d,), (d,)),
        ("ln_2", "bias"): ("ln_2.bias", (d,), (d,)),
        ("mlp", "c_fc_w"): ("mlp.c_fc.weight", (d, f), (d, f)),
        ("mlp", "c_fc_b"): ("mlp.c_fc.bias", (f,), (f,)),
        ("mlp", "c_proj_w"): ("mlp.c_proj.weight", (f, d), (f, d)),
        ("mlp", "c_proj_b"): ("mlp.c_proj.bias", (d,), (d,)),
    }
    blocks: dict[int, dict[str, dict[str, list[np.ndarray]]]] = {}
    for i in range(cfg.n_layer):  # layer i is group g's j-th block: row g of blocks[j]'s stack
        _, j = cfg.layer_slot(i)
        for (module, leaf), (hf_name, hf_shape, shape) in per_layer.items():
            rows = blocks.setdefault(j, {}).setdefault(module, {}).setdefault(leaf, [])
            rows.append(take(f"h.{i}.{hf_name}", hf_shape).reshape(shape))
    blocks = _map(np.stack, blocks)
    params = {
        "embed": {"wte": wte, "wpe": take("wpe.weight", (cfg.n_ctx, d))},
        "groups": {"blocks": blocks},
        "ln_f": {"scale": take("ln_f.weight", (d,)), "bias": take("ln_f.bias", (d,))},
    }
    if hf:
        raise UserError(f"unexpected tensors in the Hugging Face weights: {', '.join(sorted(hf)[:5])}")
    return params


def hf_tokenizer(path: paths.PathLike, cfg: ModelConfig | None = None) -> Tokenizer | None:
    """The tokenizer of a Hugging Face directory (``tokenizer.json``, or ``vocab.json`` +
    ``merges.txt``), or None when it has none. One larger than ``cfg.vocab_size`` is a UserError."""
    from gpt3_jax.data.tokenizer import HF_VOCAB_FILES, load_tokenizer

    folder = paths.as_path(path)
    found = [folder / f for f in ("tokenizer.json", *HF_VOCAB_FILES) if (folder / f).is_file()]
    if not found:
        return None
    tok = load_tokenizer(found[0])  # tokenizer.json, else vocab.json + merges.txt (both needed)
    if cfg is not None and tok.vocab_size > cfg.vocab_size:
        raise UserError(
            f"{tok.path}: the tokenizer has {tok.vocab_size} tokens but config.json's vocab_size is "
            f"{cfg.vocab_size}; the tokenizer does not belong to this model"
        )
    return tok


def from_hf(path: paths.PathLike) -> tuple[Config, Any]:
    """A Hugging Face GPT-2 directory → (our ``Config``, a ``GPT`` holding its weights, float32)."""
    import jax.numpy as jnp
    from flax import nnx

    from gpt3_jax.model import abstract_gpt, unstack_layers

    path = paths.as_path(path)
    if not path.is_dir():
        raise UserError(f"{str(path)!r} is not a directory; pass a Hugging Face GPT-2 model directory")
    model_cfg = read_hf_config(path)
    cfg = Config(model=model_cfg)
    params = hf_to_params(model_cfg, read_hf_weights(path))
    graphdef, state = abstract_gpt(model_cfg)
    if not model_cfg.scan_layers:
        params = unstack_layers(params, model_cfg)
    nnx.replace_by_pure_dict(state, _map(jnp.asarray, params))
    return cfg, nnx.merge(graphdef, state)


# --- writing a Hugging Face directory ---------------------------------------------------------


def require_dense(cfg: ModelConfig) -> None:
    """GPT-2 has only dense attention: a locally banded layer has no equivalent there."""
    if set(cfg.attention_pattern) != {"dense"}:
        raise UserError(
            f"attention pattern {list(cfg.attention_pattern)} has local layers, which GPT-2 cannot "
            "express; only all-dense models (model.attention_pattern=[dense]) convert to Hugging Face"
        )


def params_to_hf(cfg: ModelConfig, params: dict[str, Any]) -> dict[str, np.ndarray]:
    """Our params pure dict → GPT2LMHeadModel tensors (with the ``transformer.`` prefix).

    Only all-dense models are GPT-2 (see ``require_dense``).
    """
    require_dense(cfg)
    d, f, v = cfg.d_model, cfg.d_ff, cfg.vocab_size
    p = _map(lambda a: np.asarray(a, dtype=np.float32), params)
    out = {
        "wte.weight": p["embed"]["wte"][:v],
        "wpe.weight": p["embed"]["wpe"],
        "ln_f.weight": p["ln_f"]["scale"],
        "ln_f.bias": p["ln_f"]["bias"],
    }
    blocks = p["groups"]["blocks"]
    for i in range(cfg.n_layer):
        g, j = cfg.layer_slot(i)
        b = _map(lambda a, g=g: a[g], blocks[j])
        out |= {
            f"h.{i}.ln_1.weight": b["ln_1"]["scale"],
            f"h.{i}.ln_1.bias": b["ln_1"]["bias"],
            f"h.{i}.attn.c_attn.weight": b["attn"]["c_attn_w"].reshape(d, 3 * d),
            f"h.{i}.attn.c_attn.bias": b["attn"]["c_attn_b"].reshape(3 * d),
            f"h.{i}.attn.c_proj.weight": b["attn"]["c_proj_w"].reshape(d, d),
            f"h.{i}.attn.c_proj.bias": b["attn"]["c_proj_b"],
            f"h.{i}.ln_2.weight": b["ln_2"]["scale"],
            f"h.{i}.ln_2.bias": b["ln_2"]["bias"],
            f"h.{i}.mlp.c_fc.weight": b["mlp"]["c_fc_w"].reshape(d, f),
            f"h.{i}.mlp.c_fc.bias": b["mlp"]["c_fc_b"],
            f"h.{i}.mlp.c_proj.weight": b["mlp"]["c_proj_w"].reshape(f, d),
            f"h.{i}.mlp.c_proj.bias": b["mlp"]["c_proj_b"],
        }
    return {f"transformer.{k}": np.ascontiguousarray(a) for k, a in out.items()}


def hf_config(cfg: ModelConfig, eot_id: int | None = None) -> dict[str, Any]:
    """The ``config.json`` of a GPT2LMHeadModel with ``cfg``'s shape; ``eot_id`` is the tokenizer's
    end of text (GPT-2 uses it as BOS and EOS), None when no Hugging Face tokenizer goes with it."""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "n_layer": cfg.n_layer,
        "n_embd": cfg.d_model,
        "n_head": cfg.n_head,
        "n_positions": cfg.n_ctx,
        "n_inner": None,
        "vocab_size": cfg.vocab_size,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": cfg.layer_norm_eps,
        "initializer_range": cfg.init_std,
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": 0.0,
        "scale_attn_weights": True,
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
        # Without a Hugging Face tokenizer the ids are SentencePiece's: GPT-2's 50256 would be wrong.
        "bos_token_id": eot_id,
        "eos_token_id": eot_id,
    }


def to_hf(
    cfg: Config, params: Any, out_dir: paths.PathLike, tokenizer: Tokenizer | None = None
) -> paths.Path:
    """Write ``config.json`` + ``model.safetensors`` for ``GPT2LMHeadModel.from_pretrained``, and
    a Hugging Face ``tokenizer`` as the files ``AutoTokenizer.from_pretrained`` loads (a
    SentencePiece one is not converted).

    ``params`` is a model's ``nnx.State`` or its pure dict (as ``GPT`` or a checkpoint holds it).
    """
    from safetensors.numpy import save_file

    from gpt3_jax.data.tokenizer_hf import HFTokenizer
    from gpt3_jax.model import stack_layers

    pure = params.to_pure_dict() if hasattr(params, "to_pure_dict") else params
    if not cfg.model.scan_layers:
        pure = stack_layers(pure, cfg.model)
    tensors = params_to_hf(cfg.model, pure)
    hf_tok = tokenizer if isinstance(tokenizer, HFTokenizer) else None
    if hf_tok is not None and hf_tok.vocab_size > cfg.model.vocab_size:
        raise UserError(
            f"{hf_tok.path}: the tokenizer has {hf_tok.vocab_size} tokens but model.vocab_size is "
            f"{cfg.model.vocab_size}; it is not this model's tokenizer"
        )
    eot_id = None if hf_tok is None else hf_tok.eot_id
    with paths.staged_dir(out_dir) as out:  # safetensors writes a local file; uploaded at the end
        (out / "config.json").write_text(json.dumps(hf_config(cfg.model, eot_id), indent=2) + "\n")
        save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
        if hf_tok is not None:
            hf_tok.save_pretrained_files(out, model_max_length=cfg.model.n_ctx)
    return paths.as_path(out_dir)


def checkpoint_to_hf(ckpt: paths.PathLike, out_dir: paths.PathLike) -> tuple[Config, paths.Path]:
    """A checkpoint (workdir, manager root or step folder) → a Hugging Face GPT-2 directory, with
    the checkpoint's tokenizer when it is a Hugging Face one."""
    from flax import nnx

    from gpt3_jax import checkpoint
    from gpt3_jax.data.tokenizer import load_tokenizer

    require_dense(checkpoint.load_config(ckpt).model)  # before loading weights
    tok_path = checkpoint.tokenizer_path(ckpt)
    tokenizer = None if tok_path is None else load_tokenizer(tok_path)
    cfg, model = checkpoint.load_model(ckpt)
    return cfg, to_hf(cfg, nnx.state(model, nnx.Param), out_dir, tokenizer)


def _map(fn: Any, tree: Any) -> Any:
    """Apply ``fn`` to the leaves of a nested dict (keys may be ints, which jax.tree keeps too;
    anything that is not a dict, a list included, is a leaf)."""
    if isinstance(tree, dict):
        return {k: _map(fn, v) for k, v in tree.items()}
    return fn(tree)
