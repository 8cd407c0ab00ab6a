"""Classifier registry. ``specs`` holds the torch-free specs; ``registry`` builds models lazily."""

from hms_core.models.specs import MODEL_SPECS, ModelSpec

__all__ = ["MODEL_SPECS", "ModelSpec"]
