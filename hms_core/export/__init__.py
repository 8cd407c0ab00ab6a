"""Export and deployment: ONNX engines of every fold model, gated by parity against torch, in a verified package.

Importing this package (and loading a package, and predicting with it) needs numpy and onnxruntime only; the
torch side (export, parity, int8, the package writer) lives in :mod:`hms_core.export.onnx_export` and
:mod:`hms_core.export.package`, imported where the export stage runs.
"""

from hms_core.export.runtime import (
    DeploymentPackage,
    PackageError,
    PackagePrediction,
    combine,
    latest_package,
    load_package,
    member_inputs,
    verify_manifest,
)

__all__ = [
    "DeploymentPackage",
    "PackageError",
    "PackagePrediction",
    "combine",
    "latest_package",
    "load_package",
    "member_inputs",
    "verify_manifest",
]
