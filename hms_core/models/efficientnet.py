"""timm EfficientNet on spectrogram images.

The image is built from the chosen spectrogram types by :func:`hms_core.training.inputs.build_spectrogram_image`:
for each type the four chains (LL, RL, LP, RP; each ``(F, T)``) are resized to a common tile and stacked
vertically, and the types become the image channels: ``(batch, n_types, 4 * H_tile, W)``. A left/right flip swaps
the LL<->RL and LP<->RP tiles.

``pretrained=True`` loads ImageNet weights only from a local source (``pretrained_path`` or timm's / Hugging Face's
local cache, with the hub forced offline); when none is available it raises instead of silently training from
scratch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from hms_core.constants import CHAIN_FLIP, CHAIN_NAMES
from hms_core.models.base import EEGClassifier
from hms_core.models.registry import register_model

N_CHAINS = len(CHAIN_NAMES)
_CHAIN_FLIP_ORDER = [CHAIN_NAMES.index(CHAIN_FLIP[c]) for c in CHAIN_NAMES]


class PretrainedWeightsUnavailable(RuntimeError):
    """pretrained=True but no local copy of the weights exists (and downloads are not allowed)."""


def _load_pretrained(model_name: str, path: str | None, **kw: Any) -> torch.nn.Module:
    import timm

    if path is not None:
        if not os.path.exists(path):
            raise PretrainedWeightsUnavailable(
                f"efficientnet: pretrained_path '{path}' does not exist; set models.efficientnet.pretrained_path "
                "to a local timm checkpoint (.safetensors/.pth/.bin) or pretrained: false."
            )
        return timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kw)
    cached = find_cached_weights(model_name)
    if cached is None:
        raise PretrainedWeightsUnavailable(
            f"efficientnet: pretrained weights for '{model_name}' are not in the local Hugging Face or torch hub "
            "cache, and this platform never downloads. Put a timm checkpoint on disk and set "
            "models.efficientnet.pretrained_path, pre-populate the cache, or set pretrained: false."
        )
    return timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay={"file": str(cached)}, **kw)


def find_cached_weights(model_name: str) -> Path | None:
    """Local file of timm's default pretrained weights for ``model_name`` (HF cache or torch hub), or None."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(model_name)
    if cfg is None:
        return None
    hub_id = getattr(cfg, "hf_hub_id", None)
    if hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo, _, rev = hub_id.partition("@")
        for fname in ("model.safetensors", "pytorch_model.bin", getattr(cfg, "hf_hub_filename", None)):
            if fname:
                hit = try_to_load_from_cache(repo, fname, revision=rev or None)
                if isinstance(hit, str) and os.path.exists(hit):
                    return Path(hit)
    url = getattr(cfg, "url", None)
    if url:
        p = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
        if p.exists():
            return p
    return None


@register_model("efficientnet")
class SpectrogramEfficientNet(EEGClassifier):
    name = "efficientnet"
    input_kind = "spectrogram"

    def __init__(
        self,
        model_name: str = "efficientnet_b3",
        pretrained: bool = True,
        pretrained_path: str | None = None,
        num_classes: int = 6,
        spectrograms: Sequence[str] = ("stft", "mel"),
        image_size: Sequence[int] | None = None,
        drop_rate: float = 0.2,
        n_chans: int | None = None,
        n_times: int | None = None,
        sfreq: float | None = None,
    ) -> None:
        hp = dict(model_name=model_name, pretrained=pretrained, pretrained_path=pretrained_path,
                  num_classes=num_classes, spectrograms=list(spectrograms),
                  image_size=list(image_size) if image_size is not None else None, drop_rate=drop_rate)  # fmt: skip
        super().__init__(hp, {"n_chans": n_chans, "n_times": n_times, "sfreq": sfreq})
        import timm

        if model_name not in timm.list_models():
            raise ValueError(
                f"Invalid value for the 'model_name' parameter. Allowed values are timm models such as "
                f"{timm.list_models('*efficientnet_b*')[:6]}, but got '{model_name}' instead."
            )
        kw = dict(num_classes=num_classes, in_chans=len(spectrograms), drop_rate=drop_rate)
        self.backbone = (
            _load_pretrained(model_name, pretrained_path, **kw) if pretrained
            else timm.create_model(model_name, pretrained=False, **kw)
        )  # fmt: skip

    def get_config(self) -> dict[str, Any]:
        cfg = super().get_config()
        cfg["pretrained"] = False  # weights come from the saved state dict when rebuilding
        return cfg

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.backbone.set_grad_checkpointing(enable)

    def flip_input(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tiles = x.reshape(b, c, N_CHAINS, h // N_CHAINS, w)
        return tiles[:, :, _CHAIN_FLIP_ORDER].reshape(b, c, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)
