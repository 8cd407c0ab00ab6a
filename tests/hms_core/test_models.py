"""Contract tests over the model registry (braindecode style): every registered model is covered automatically."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hms_core.models.registry import create_model, get_spec, list_models, model_from_config, resolve_config
from hms_core.models.specs import MODEL_SPECS

TINY = {
    "resnet1d_gru": {"initial_filters": 8, "num_blocks": [1, 1], "gru_hidden": 8, "dropout": 0.3},
    "efficientnet": {"model_name": "test_efficientnet", "pretrained": False, "spectrograms": ["stft", "mel"]},
    "sparcnet": {"block_layers": 2, "growth_rate": 8, "bn_size": 2, "input_downsample": 2},
    "lightgbm": {"n_estimators": 20, "min_child_samples": 5, "num_threads": 1},
    "eeg_foundation": {"model_size": "tiny", "pretrained": False},
}
TORCH_MODELS = [n for n in list_models() if get_spec(n).input_kind != "features"]
GBM_MODELS = list_models("features")


def test_tiny_configs_cover_registry() -> None:
    assert list_models() == list(MODEL_SPECS) and set(TINY) == set(list_models())


def _build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    kind = get_spec(name).input_kind
    sig = {"n_chans": 16, "n_times": 2000} if kind == "raw" else {}
    return create_model(name, **TINY[name], **sig)


def _input(name: str, batch: int = 4, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if get_spec(name).input_kind == "raw":
        return torch.randn(batch, 16, 2000, generator=g)
    return torch.randn(batch, 2, 64, 40, generator=g)


@pytest.fixture(scope="module", params=TORCH_MODELS)
def built(request: pytest.FixtureRequest) -> tuple[str, torch.nn.Module]:
    return request.param, _build(request.param).eval()


def test_finite_batched_output(built: tuple[str, torch.nn.Module]) -> None:
    name, model = built
    with torch.no_grad():
        out = model(_input(name))
    assert out.shape == (4, 6) and torch.isfinite(out).all()


def test_eval_forward_leaves_input_and_state_unchanged(built: tuple[str, torch.nn.Module]) -> None:
    name, model = built
    x = _input(name)
    x0 = x.clone()
    state0 = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        a = model(x)
        b = model(x)
    assert torch.equal(x, x0)
    assert torch.equal(a, b)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state0[k]), k


def test_no_leakage_across_samples(built: tuple[str, torch.nn.Module]) -> None:
    name, model = built
    x = _input(name)
    with torch.no_grad():
        full = model(x)
        alone = model(x[1:2])
        x2 = x.clone()
        x2[0] = torch.randn_like(x2[0]) * 5
        changed = model(x2)
    torch.testing.assert_close(full[1:2], alone, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(full[1:], changed[1:], atol=1e-4, rtol=1e-4)


def test_config_and_weights_round_trip(built: tuple[str, torch.nn.Module], tmp_path) -> None:
    name, model = built
    torch.save(model.state_dict(), tmp_path / "w.pt")
    clone = model_from_config(model.get_config())
    clone.load_state_dict(torch.load(tmp_path / "w.pt", weights_only=True))
    clone.eval()
    x = _input(name)
    with torch.no_grad():
        torch.testing.assert_close(model(x), clone(x))
    assert clone.get_config() == model.get_config()


def test_flip_is_an_involution_that_moves_data(built: tuple[str, torch.nn.Module]) -> None:
    name, model = built
    x = _input(name, batch=2)
    f = model.flip_input(x)
    assert not torch.equal(f, x)
    assert torch.equal(model.flip_input(f), x)


@pytest.mark.parametrize("name", TORCH_MODELS)
def test_gradient_checkpointing_matches_plain_gradients(name: str) -> None:
    model = _build(name).train()
    for m in model.modules():  # dropout off, BN on: checkpointing must not change the maths
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        for attr in ("drop_rate", "drop_prob"):  # functional dropout in timm / braindecode
            if isinstance(getattr(m, attr, None), float):
                setattr(m, attr, 0.0)
    x = _input(name, batch=3)
    model(x).logsumexp(1).sum().backward()
    g0 = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).logsumexp(1).sum().backward()
    g1 = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    assert len(g0) == len(g1) > 0
    for a, b in zip(g0, g1):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)


def test_resnet_se_block_and_depth_follow_config() -> None:
    from hms_core.models.resnet1d_gru import SqueezeExcitation1d

    with_se = create_model("resnet1d_gru", n_chans=16, num_blocks=[2, 1], initial_filters=8, gru_hidden=8)
    without = create_model("resnet1d_gru", n_chans=16, num_blocks=[2, 1], initial_filters=8, gru_hidden=8,
                           se_block=False)  # fmt: skip
    assert sum(isinstance(m, SqueezeExcitation1d) for m in with_se.modules()) == 3
    assert not any(isinstance(m, SqueezeExcitation1d) for m in without.modules())
    assert with_se.gru.bidirectional
    assert resolve_config("resnet1d_gru", {})["initial_filters"] == 64  # the seed defaults


def test_sparcnet_is_braindecode_sparcnet() -> None:
    from braindecode.models import SPARCNet

    m = create_model("sparcnet", n_chans=16, n_times=2000)
    assert isinstance(m.net, SPARCNet) and m.get_config()["block_layers"] == 4


def test_registry_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="Allowed values are .*'resnet1d_gru'.*but got 'resnet'"):
        create_model("resnet")
    with pytest.raises(ValueError, match=r"models\.resnet1d_gru\.dropuot"):
        create_model("resnet1d_gru", n_chans=16, dropuot=0.1)
    with pytest.raises(ValueError, match="needs the 'n_chans' parameter"):
        create_model("resnet1d_gru")
    with pytest.raises(ValueError, match=r"models\.efficientnet\.spectrograms"):
        create_model("efficientnet", pretrained=False, spectrograms=["fft"])


def test_efficientnet_pretrained_offline_fails_clearly(tmp_path, monkeypatch) -> None:
    from hms_core.models.efficientnet import PretrainedWeightsUnavailable

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(PretrainedWeightsUnavailable, match="pretrained: false"):
        create_model("efficientnet", model_name="test_efficientnet", pretrained=True)
    with pytest.raises(PretrainedWeightsUnavailable, match="does not exist"):
        create_model("efficientnet", model_name="test_efficientnet", pretrained=True,
                     pretrained_path=str(tmp_path / "missing.safetensors"))  # fmt: skip


def test_efficientnet_loads_local_pretrained_file(tmp_path) -> None:
    import timm

    torch.manual_seed(3)
    src = timm.create_model("test_efficientnet", num_classes=6, in_chans=3)
    torch.save(src.state_dict(), tmp_path / "w.pth")
    m = create_model("efficientnet", model_name="test_efficientnet", pretrained=True,
                     pretrained_path=str(tmp_path / "w.pth"), spectrograms=["stft", "mel", "kaggle"])  # fmt: skip
    k = "blocks.0.0.conv.weight"
    assert torch.equal(m.backbone.state_dict()[k], src.state_dict()[k])


def test_spectrogram_image_tiles_chains_and_flip_swaps_them() -> None:
    from hms_core.training.inputs import CHAIN_FLIP_ORDER, build_spectrogram_image, image_tile_size

    a = {"stft": np.arange(4)[:, None, None] * np.ones((4, 8, 10)), "mel": np.ones((4, 5, 7))}
    assert image_tile_size({"stft": (8, 10), "mel": (5, 7)}, ["stft", "mel"], None) == (8, 10)
    assert image_tile_size({"stft": (8, 10)}, ["stft"], (64, 40)) == (16, 40)
    img = build_spectrogram_image(a, ["stft", "mel"], (8, 10))
    assert img.shape == (2, 32, 10) and img.dtype == torch.float32
    assert [float(img[0, 8 * c].mean()) for c in range(4)] == [0, 1, 2, 3]
    assert torch.allclose(img[1], torch.ones(32, 10))  # the 5 x 7 mel tiles resized to the 8 x 10 tile
    batched = build_spectrogram_image({k: torch.as_tensor(v)[None].repeat(3, 1, 1, 1) for k, v in a.items()},
                                      ["stft", "mel"], (8, 10))  # fmt: skip
    assert batched.shape == (3, 2, 32, 10) and torch.equal(batched[2], img)
    flipped = build_spectrogram_image({k: v[list(CHAIN_FLIP_ORDER)] for k, v in a.items()}, ["stft"], (8, 10))
    assert [float(flipped[0, 8 * c].mean()) for c in range(4)] == [1, 0, 3, 2]
    m = create_model("efficientnet", **TINY["efficientnet"])
    f = m.flip_input(img[None])[0]
    assert [float(f[0, 8 * c].mean()) for c in range(4)] == [1, 0, 3, 2]  # LL<->RL, LP<->RP


# --- LightGBM (features) ---------------------------------------------------------------------------------------
def _features(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    cls = rng.integers(0, 6, n)
    x = np.eye(6)[cls] + rng.normal(0, 0.5, (n, 6))
    y = rng.dirichlet(np.ones(6) * 0.3, n) * 0.3 + np.eye(6)[cls] * 0.7
    return x.astype(np.float32), y / y.sum(1, keepdims=True)


def test_soft_label_expansion() -> None:
    from hms_core.models.lightgbm_model import expand_soft_labels

    x = np.arange(4, dtype=np.float32).reshape(2, 2)
    y = np.array([[0.5, 0.5, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1.0]])
    xe, ye, we = expand_soft_labels(x, y, np.array([1.0, 0.5]))
    assert ye.tolist() == [0, 1, 5] and we.tolist() == [0.5, 0.5, 0.5] and xe[2].tolist() == [2, 3]


@pytest.mark.parametrize("name", GBM_MODELS)
def test_gbm_contract(name: str, tmp_path) -> None:
    from hms_core.metrics import kl_divergence, prior_baseline

    x, y = _features()
    m = create_model(name, **TINY[name]).fit(x[:200], y[:200], x[200:250], y[200:250])
    p = m.predict_proba(x[250:])
    assert p.shape == (50, 6) and np.isfinite(p).all() and np.allclose(p.sum(1), 1)
    np.testing.assert_allclose(m.predict_proba(x[250:251]), p[:1], rtol=1e-12)  # no cross-row dependence
    assert kl_divergence(y[250:], p) < 0.8 * kl_divergence(y[250:], prior_baseline(y[:200], 50))
    m.save(tmp_path / "m.txt")
    clone = model_from_config(m.get_config()).load(tmp_path / "m.txt")
    np.testing.assert_allclose(clone.predict_proba(x[250:]), p, rtol=1e-12)
