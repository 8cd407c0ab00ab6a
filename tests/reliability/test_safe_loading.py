"""Safe loading, checked over the source tree: nothing the platform loads can run pickled code.

Checkpoints and weights are read with ``torch.load(weights_only=True)``; no module imports ``pickle`` (or a
library that unpickles: joblib, cloudpickle, dill), reads ``pandas.read_pickle`` or lets ``numpy.load`` unpickle.
The test parses every module (comments and strings cannot fool it) and names the file and line of an offence.
"""

from __future__ import annotations

import ast
import io
import random
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("hms_core", "hms_dagster", "benchmarks")
UNPICKLING_MODULES = {"pickle", "cPickle", "_pickle", "joblib", "cloudpickle", "dill", "shelve", "marshal"}


def _modules() -> list[Path]:
    files = [p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))]
    assert len(files) > 50, f"expected the platform's modules under {ROOT}, found {len(files)}"
    return files


def _offences(path: Path, root: Path = ROOT) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out: list[str] = []
    where = f"{path.relative_to(root)}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [f"{where}:{node.lineno}: import {a.name}" for a in node.names
                    if a.name.split(".")[0] in UNPICKLING_MODULES]  # fmt: skip
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNPICKLING_MODULES:
            out.append(f"{where}:{node.lineno}: from {node.module} import ...")
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
            kw = {k.arg: k.value for k in node.keywords}
            if name == "load" and owner == "torch":
                wo = kw.get("weights_only")
                if not (isinstance(wo, ast.Constant) and wo.value is True):
                    out.append(f"{where}:{node.lineno}: torch.load without weights_only=True")
            elif name == "read_pickle":
                out.append(f"{where}:{node.lineno}: read_pickle")
            elif name == "load" and owner in ("np", "numpy"):
                ap = kw.get("allow_pickle")
                if ap is not None and not (isinstance(ap, ast.Constant) and ap.value is False):
                    out.append(f"{where}:{node.lineno}: numpy.load with allow_pickle")
    return out


def test_no_module_can_unpickle() -> None:
    offences = [o for p in _modules() for o in _offences(p)]
    assert not offences, "unsafe loading:\n" + "\n".join(offences)


def test_the_scanner_finds_what_it_looks_for(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import pickle\nimport torch, numpy as np, pandas as pd\n"
        "torch.load('x')\ntorch.load('x', weights_only=False)\nnp.load('x', allow_pickle=True)\n"
        "pd.read_pickle('x')\nfrom joblib import load\n"
    )
    found = _offences(bad, tmp_path)
    assert len(found) == 6, found


def test_a_training_checkpoint_loads_with_weights_only(tmp_path: Path) -> None:
    from hms_core.training.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state

    state = rng_state()
    save_checkpoint(tmp_path / "last.pt", {"rng": state, "epoch": 3})
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    set_rng_state(load_checkpoint(tmp_path / "last.pt")["rng"])
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected


def test_a_pickled_object_in_a_checkpoint_is_refused(tmp_path: Path) -> None:
    from hms_core.training.checkpoint import load_checkpoint

    class Payload:
        def __reduce__(self):  # would run on unpickling
            return (print, ("pwned",))

    buf = io.BytesIO()
    torch.save({"x": Payload()}, buf)
    (tmp_path / "last.pt").write_bytes(buf.getvalue())
    with pytest.raises(Exception, match="[Ww]eights only load failed|Unsupported global"):
        load_checkpoint(tmp_path / "last.pt")


def test_atomic_writes_get_ordinary_permissions_and_keep_the_old_file_on_failure(tmp_path: Path) -> None:
    import os
    import stat

    from hms_core.io import atomic_path, write_json

    target = write_json(tmp_path / "a.json", {"v": 1})
    mode = stat.S_IMODE(os.stat(target).st_mode)
    mask = os.umask(0o022)
    os.umask(mask)
    assert mode == 0o666 & ~mask, oct(mode)  # not the 0o600 of a temporary file, never world-writable
    assert not mode & stat.S_IWOTH
    with pytest.raises(OSError, match="disk full"), atomic_path(target) as tmp:
        tmp.write_text('{"v": 2, "trunc')
        raise OSError(28, "disk full (simulated)")
    assert target.read_text() == '{\n  "v": 1\n}'
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temporary file left behind
