"""The docs say what the code does: the README's preset table, and help-text examples that must work."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import jax
import pytest

from gpt3_jax.config import load_config
from gpt3_jax.info import count

ROOT = Path(__file__).resolve().parents[1]
UNITS = {"M": 1e6, "B": 1e9}


def readme_presets() -> list[list[str]]:
    """The cells of the README's preset table rows: preset, params, layers, d_model, heads, batch, lr."""
    rows = re.findall(r"^\| `(configs/gpt3-[^`]+\.yaml)` \|(.+)\|$", (ROOT / "README.md").read_text(), re.M)
    return [[path, *(cell.strip() for cell in cells.split("|"))] for path, cells in rows]


def test_readme_table_lists_every_paper_preset() -> None:
    listed = sorted(Path(row[0]).stem for row in readme_presets())
    assert listed == sorted(p.stem for p in (ROOT / "configs").glob("gpt3-*.yaml"))


@pytest.mark.parametrize("row", readme_presets(), ids=lambda row: Path(row[0]).stem)
def test_readme_table_row_matches_the_preset(row: list[str]) -> None:
    path, params, layers, d_model, heads, batch, lr = row
    cfg = load_config(ROOT / path)
    m = cfg.model
    assert (int(layers), int(d_model), int(heads)) == (m.n_layer, m.d_model, m.n_head)
    assert (int(batch), float(lr)) == (cfg.train.batch_size, cfg.optim.lr)
    assert m.n_ctx == 2048  # the column header's "seq × 2048"
    number, unit = re.fullmatch(r"([\d.]+)([MB])", params).groups()
    decimals = len(number.partition(".")[2])
    real = count(m).params / UNITS[unit]
    assert abs(real - float(number)) <= 0.5 * 10**-decimals, f"{path}: {real:.4f}{unit} is not {params}"


def _train_help_init_from_example() -> list[str]:
    from gpt3_jax.cli.train import HELP

    command = next(c for c in HELP.replace("\\\n", " ").splitlines() if "train.init_from=" in c)
    argv = shlex.split(command.partition("#")[0])
    assert argv[:2] == ["gpt3-jax", "train"]
    return argv[2:]


def test_train_help_fine_tuning_example_fits_gpt2_small(tmp_path: Path) -> None:
    """The help's ``train.init_from`` example gives the parameter shapes of a converted GPT-2 small."""
    from gpt3_jax.checkpoint import stored_config
    from gpt3_jax.config import Config
    from gpt3_jax.convert import read_hf_config
    from gpt3_jax.model import abstract_gpt

    config, *overrides = _train_help_init_from_example()
    cfg = load_config(ROOT / config, overrides)
    gpt2_small = {"model_type": "gpt2", "n_layer": 12, "n_embd": 768, "n_head": 12, "n_positions": 1024}
    (tmp_path / "config.json").write_text(json.dumps({**gpt2_small, "vocab_size": 50257}))
    converted = Config(model=read_hf_config(tmp_path))

    def shapes(c: Config) -> dict:
        return jax.tree.map(lambda v: v.shape, abstract_gpt(stored_config(c).model)[1].to_pure_dict())

    assert shapes(cfg) == shapes(converted)
    assert cfg.model.attention_pattern == ("dense",) and cfg.train.init_from


def test_tiny_preset_header_names_its_tokenizer() -> None:
    cfg = load_config(ROOT / "configs" / "tiny.yaml")
    header = "".join(
        line for line in (ROOT / "configs" / "tiny.yaml").read_text().splitlines() if line[:1] == "#"
    )
    assert cfg.data.tokenizer_type == "bpe" and "BPE" in header and "char" not in header


def python_blocks(doc: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", doc.read_text(), re.S)


@pytest.fixture(scope="module")
def doc_checkpoint(tmp_path_factory, gpt2_style_tokenizer: Path) -> Path:
    """A small random model (dense and banded layers) with a byte-level BPE tokenizer: what the
    docs' examples load in place of a trained run."""
    from flax import nnx

    from gpt3_jax.checkpoint import save_params
    from gpt3_jax.config import Config, ModelConfig
    from gpt3_jax.model import GPT

    cfg = ModelConfig(n_layer=2, d_model=32, n_head=4, n_ctx=128, vocab_size=512, local_window=8)
    params = nnx.state(GPT(cfg, rngs=nnx.Rngs(0)), nnx.Param)
    root = tmp_path_factory.mktemp("docs") / "ckpt"
    return save_params(root, Config(model=cfg), params, tokenizer=gpt2_style_tokenizer)


def test_readme_python_example_runs() -> None:
    [block] = python_blocks(ROOT / "README.md")
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["logits"].shape == (2, 16, 1024)


@pytest.mark.parametrize("doc, placeholder", [("sampling.md", "runs/tiny"), ("evaluation.md", "runs/demo")])
def test_docs_python_examples_run(doc: str, placeholder: str, doc_checkpoint: Path, monkeypatch) -> None:
    """The sampling and evaluation docs' examples run as written, on a checkpoint put where they
    name one (from the repository root, as their relative paths assume)."""
    blocks = python_blocks(ROOT / "docs" / doc)
    assert blocks and all(placeholder in b for b in blocks[:1])
    monkeypatch.chdir(ROOT)
    namespace: dict = {}
    for block in blocks:
        code = block.replace(repr(placeholder).replace("'", '"'), repr(str(doc_checkpoint)))
        exec(compile(code, f"docs/{doc}", "exec"), namespace)
    assert "lm" in namespace
