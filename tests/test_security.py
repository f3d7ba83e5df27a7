"""Security guarantees (docs/errors.md, "Security"), pinned on the package's source: nothing is
unpickled (a pytorch_model.bin goes through torch's weights-only reader), YAML is loaded safely,
nothing is run through a shell or evaluated, and nothing opens network connections itself."""

from __future__ import annotations

import ast
import os
import pickle
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "gpt3_jax"
SOURCES = sorted(PACKAGE.rglob("*.py"))
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"}
NETWORK_MODULES = {"urllib", "urllib3", "requests", "httpx", "http", "socket", "aiohttp", "ftplib"}


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def _findings(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    where = lambda node: f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"  # noqa: E731
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        for name in names:
            top = name.split(".")[0]
            if top in NETWORK_MODULES:
                found.append(f"{where(node)}: imports {name} (network)")
            if top in UNSAFE_MODULES:
                found.append(f"{where(node)}: imports {name} (unpickling)")
    for node, func in _calls(tree):
        keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
        if func in ("eval", "exec", "compile", "os.system", "os.popen", "__import__"):
            found.append(f"{where(node)}: calls {func}")
        if keywords.get("shell") not in (None, "False"):
            found.append(f"{where(node)}: {func}(shell=...)")
        if func.startswith("subprocess.") and node.args and not isinstance(node.args[0], ast.List | ast.Name):
            found.append(f"{where(node)}: {func} with a command that is not an argument list")
        if func.endswith("torch.load") and keywords.get("weights_only") != "True":
            found.append(f"{where(node)}: torch.load without weights_only=True")
        if func.endswith(("np.load", "numpy.load")) and keywords.get("allow_pickle") not in (None, "False"):
            found.append(f"{where(node)}: np.load(allow_pickle=...)")
        if func.startswith("yaml.") and func not in ("yaml.safe_load", "yaml.safe_dump", "yaml.YAMLError"):
            found.append(f"{where(node)}: {func} (use yaml.safe_load / yaml.safe_dump)")
    return found


def test_the_package_source_has_no_unsafe_calls() -> None:
    """No unpickling module, no eval/exec/os.system/shell=True, subprocesses only with argument
    lists, torch.load only weights-only, YAML only safe_load, no network module."""
    assert len(SOURCES) > 30  # the scan sees the package
    findings = [f for path in SOURCES for f in _findings(path)]
    allowed = {  # the exception type of torch's weights-only reader, which refuses a hostile pickle
        "gpt3_jax/convert.py: imports pickle (unpickling)",
    }
    assert [f for f in findings if re.sub(r":\d+:", ":", f) not in allowed] == []


def test_the_scan_finds_what_it_looks_for(tmp_path: Path, monkeypatch) -> None:
    """The scan is not blind: a file with each forbidden thing gives one finding for each."""
    bad = tmp_path / "gpt3_jax" / "bad.py"
    bad.parent.mkdir()
    bad.write_text(
        "import pickle, requests, subprocess, os, yaml, torch, numpy as np\n"
        "eval('1')\nos.system('ls')\nsubprocess.run('ls', shell=True)\nyaml.load('a')\n"
        "torch.load('f')\nnp.load('f', allow_pickle=True)\n"
    )
    monkeypatch.setattr(f"{__name__}.PACKAGE", bad.parent)
    found = _findings(bad)
    assert len(found) == 9, found


def test_a_hostile_pytorch_bin_is_refused_not_run(tmp_path: Path) -> None:
    """A pytorch_model.bin whose pickle would run a shell command: plain unpickling runs it (the
    file really is hostile); the converter refuses it with one line and runs nothing."""
    torch = pytest.importorskip("torch")
    from gpt3_jax.convert import read_hf_weights
    from gpt3_jax.errors import UserError

    class Hostile:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'ran'}",)

    payload = pickle.dumps({"wte.weight": Hostile()})
    pickle.loads(payload)  # what an unsafe reader would do
    assert (tmp_path / "ran").exists()
    (tmp_path / "ran").unlink()

    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "pytorch_model.bin").write_bytes(payload)
    with pytest.raises(UserError, match="refused") as exc:
        read_hf_weights(tmp_path / "hf")
    assert "\n" not in str(exc.value) and not (tmp_path / "ran").exists()

    torch.save({"wte.weight": torch.ones(2, 3)}, tmp_path / "hf" / "pytorch_model.bin")  # plain tensors
    assert read_hf_weights(tmp_path / "hf")["wte.weight"].shape == (2, 3)


def test_yaml_tags_are_not_constructed(tmp_path: Path) -> None:
    """A config with a Python object tag is refused as YAML, not built."""
    from gpt3_jax.config import load_config
    from gpt3_jax.errors import UserError

    bad = tmp_path / "bad.yaml"
    bad.write_text(f"model: !!python/object/apply:os.system ['touch {tmp_path / 'ran'}']\n")
    with pytest.raises(UserError):
        load_config(bad)
    assert not (tmp_path / "ran").exists()
