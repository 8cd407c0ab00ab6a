"""The preprocessing transform (serving, scanning and training share it) runs where torch cannot be imported."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from hms_core.constants import EEG_FILE_COLUMNS
from hms_core.preprocess import preprocess_record
from tests.hms_core.test_preprocess import _cfg, _eeg

#: Runs first in the child: every import of torch, torchaudio or torchvision (or a submodule) raises ImportError.
#: The finder answers ``find_spec`` with a spec whose loader refuses, rather than raising there, because polars
#: probes for torch with ``importlib.util.find_spec`` at import (and only uses it for torch tensors).
_BLOCK_TORCH = """
import importlib.abc, importlib.machinery, sys

BLOCKED = ("torch", "torchaudio", "torchvision")

class _Refuse(importlib.abc.Loader):
    def create_module(self, spec):
        raise ImportError(f"torch is blocked in this test: import of {spec.name!r}")

    def exec_module(self, module):
        raise ImportError(f"torch is blocked in this test: import of {module.__name__!r}")

class _NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            return importlib.machinery.ModuleSpec(name, _Refuse())
        return None

sys.meta_path.insert(0, _NoTorch())
"""

_CHILD = """
import json, sys
from pathlib import Path
import numpy as np
import pandas as pd
try:
    import torch  # noqa: F401
    blocked = False
except ImportError:
    blocked = True
from hms_core.partition import build_partition, load_partition
from hms_core.preprocess import preprocess_record
from tests.hms_core.test_preprocess import _cfg

tmp = Path(sys.argv[1])
cfg = _cfg(types=["stft", "multitaper", "wavelet", "mel"])
eeg = pd.read_parquet(tmp / "eegs" / "7.parquet").to_numpy()
out = preprocess_record(eeg, cfg, record_id="torch-free")
np.savez(tmp / "child.npz", **{k: v for k, v in out.items() if isinstance(v, np.ndarray)},
         features=out["features"].to_numpy())
rows = pd.DataFrame({"eeg_id": [7, 7], "eeg_label_offset_seconds": [0.0, 5.0], "patient_id": 1, "fold": 0})
build_partition(rows, tmp / "eegs", None, tmp / "part", cfg, batch_size=2)
part = load_partition(tmp / "part")
print(json.dumps({"blocked": blocked, "torch_loaded": sorted(m for m in sys.modules if m.startswith("torch")),
                  "partition_rows": len(part), "bipolar_dtype": str(part.array("bipolar").dtype)}))
"""


def test_transform_and_partition_run_with_torch_blocked(tmp_path: Path) -> None:
    """preprocess_record (all four spectrogram types + features) and build_partition in a child process whose
    imports of torch fail: same outputs as here, and torch never loaded."""
    rng = np.random.default_rng(11)
    eeg = _eeg(rng)
    eeg[3000:3050, 4] = np.nan
    (tmp_path / "eegs").mkdir()
    pd.DataFrame(eeg, columns=list(EEG_FILE_COLUMNS)).to_parquet(tmp_path / "eegs" / "7.parquet")
    code = _BLOCK_TORCH + textwrap.dedent(_CHILD)
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, cwd=repo,
                          check=False, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["blocked"] is True, "the finder did not block torch"
    assert got["torch_loaded"] == []
    assert got["partition_rows"] == 2 and got["bipolar_dtype"] == "float16"

    cfg = _cfg(types=["stft", "multitaper", "wavelet", "mel"])
    here = preprocess_record(pd.read_parquet(tmp_path / "eegs" / "7.parquet").to_numpy(), cfg, record_id="here")
    child = np.load(tmp_path / "child.npz")
    for name in ("bipolar", "referential", "ekg", "spec_stft", "spec_multitaper", "spec_wavelet", "spec_mel"):
        a, b = child[name].astype(np.float32), here[name].astype(np.float32)
        assert np.isfinite(a).all(), name
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-3, err_msg=name)
    np.testing.assert_allclose(child["features"], here["features"].to_numpy(), rtol=1e-4, atol=1e-6)


_PREDICT_CHILD = """
import json, sys
from pathlib import Path
try:
    import torch  # noqa: F401
    blocked = False
except ImportError:
    blocked = True
from hms_core.serving.predictor import Predictor

pred = Predictor.from_path(Path(sys.argv[1]))
res = pred.predict_files([Path(sys.argv[2])])[0].to_dict()
print(json.dumps({"blocked": blocked, "torch_loaded": sorted(m for m in sys.modules if m.startswith("torch")),
                  "windows": res["windows"]}))
"""


def test_the_whole_prediction_path_runs_with_torch_blocked(tmp_path: Path, deployment_package) -> None:
    """A deployment package loaded (manifest verified) and an HMS parquet predicted through the service's path
    (reader, preprocessing, onnxruntime engines, blend) in a child whose torch imports fail: the same windows and
    probabilities as in this process, where torch is importable."""
    from hms_core.serving.predictor import Predictor
    from tests.hms_core.test_serving_inputs import hms_parquet

    record = tmp_path / "1234.parquet"
    record.write_bytes(hms_parquet(seed=5))
    code = _BLOCK_TORCH + textwrap.dedent(_PREDICT_CHILD)
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", code, str(deployment_package), str(record)], capture_output=True,
                          text=True, cwd=repo, check=False, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["blocked"] is True and got["torch_loaded"] == []
    here = Predictor.from_path(deployment_package).predict_files([record])[0].to_dict()["windows"]
    assert len(got["windows"]) == len(here) >= 1
    for a, b in zip(got["windows"], here, strict=True):
        assert a["probabilities"] is not None
        assert a["probabilities"].keys() == b["probabilities"].keys()
        np.testing.assert_allclose(list(a["probabilities"].values()), list(b["probabilities"].values()), atol=1e-6)
