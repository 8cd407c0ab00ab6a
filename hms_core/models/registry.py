"""Model registry (timm style): ``@register_model`` + ``create_model(name, **cfg)``.

The specs in :mod:`hms_core.models.specs` name every model and the module that defines it; that module is imported
only when the model is first created, so enumerating models (``list_models``) never imports torch, timm or
lightgbm. Every registered builder returns an object that carries its own resolved config (``get_config()``), so
``model_from_config(model.get_config())`` rebuilds the same architecture.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from hms_core.models.specs import MODEL_SPECS, ModelSpec

#: Keys describing the input signal (not hyper-parameters); passed through to builders unvalidated.
SIGNAL_KEYS: tuple[str, ...] = ("n_chans", "n_times", "sfreq")

_BUILDERS: dict[str, Callable[..., Any]] = {}


def register_model(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register ``fn`` (a class or factory) as the builder of the model ``name`` (must have a spec)."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name not in MODEL_SPECS:
            raise ValueError(
                f"Invalid value for the 'name' parameter. Allowed values are {sorted(MODEL_SPECS)}, "
                f"but got '{name}' instead (add a ModelSpec to hms_core/models/specs.py first)."
            )
        _BUILDERS[name] = fn
        return fn

    return deco


def list_models(input_kind: str | None = None) -> list[str]:
    """Names of all registered models (optionally only those with the given input kind), in spec order."""
    return [n for n, s in MODEL_SPECS.items() if input_kind is None or s.input_kind == input_kind]


def get_spec(name: str) -> ModelSpec:
    if name not in MODEL_SPECS:
        raise ValueError(
            f"Invalid value for the 'name' parameter. Allowed values are {list(MODEL_SPECS)}, but got '{name}' instead."
        )
    return MODEL_SPECS[name]


def resolve_config(name: str, cfg: dict[str, Any] | None = None) -> dict[str, Any]:
    """Validate ``cfg`` against the model's config class; return it with defaults filled in (``enabled`` dropped)."""
    spec = get_spec(name)
    params = {k: v for k, v in (cfg or {}).items() if k not in SIGNAL_KEYS}
    try:
        out = spec.config_cls.model_validate(params).model_dump(mode="json")
    except ValidationError as e:
        errs = "; ".join(
            f"models.{name}.{'.'.join(map(str, x['loc']))}: {x['msg']} (got {x.get('input')!r})"
            for x in e.errors()
        )
        raise ValueError(errs) from None
    out.pop("enabled", None)
    return out


def get_builder(name: str) -> Callable[..., Any]:
    spec = get_spec(name)
    if name not in _BUILDERS:
        importlib.import_module(spec.module)
    if name not in _BUILDERS:
        raise RuntimeError(f"Module '{spec.module}' did not register model '{name}' (missing @register_model).")
    return _BUILDERS[name]


def create_model(name: str, **cfg: Any) -> Any:
    """Build model ``name`` from its config (validated; unknown keys raise). Signal keys: n_chans, n_times, sfreq."""
    resolved = resolve_config(name, cfg)
    signal = {k: cfg[k] for k in SIGNAL_KEYS if k in cfg}
    return get_builder(name)(**resolved, **signal)


def model_from_config(config: dict[str, Any]) -> Any:
    """Rebuild a model from ``model.get_config()`` (``{'name': ..., **cfg}``)."""
    config = dict(config)
    name = config.pop("name")
    return create_model(name, **config)
