import pytest


@pytest.fixture(scope="session")
def quiet_predictor(deployment_package):
    """One :class:`~hms_core.serving.predictor.Predictor` on the shared package (loaded and verified once) for the
    service tests of this folder; nothing appended to the monitoring log. Each test builds its own app around it
    with its own ``ServingConfig`` (slots, queue, limits)."""
    from hms_core.config import ServingConfig
    from hms_core.serving.predictor import Predictor

    return Predictor.from_path(deployment_package, ServingConfig(log_predictions=False))
