"""Realistic synthetic HMS-format data (the embedded demo data set).

``generate_dataset(out_dir, cfg, progress)`` writes train.csv, test.csv, sample_submission.csv, train_eegs/,
test_eegs/, train_spectrograms/, test_spectrograms/ and synthetic_manifest.json exactly as the Kaggle competition
lays them out. :func:`generate_sample` renders one labelled EEG in memory with its latent parameters.
"""

from hms_core.synthetic.generator import (
    EegPlan,
    SessionPlan,
    generate_dataset,
    plan_dataset,
    render_session,
    session_complete,
    session_latents,
)
from hms_core.synthetic.sample import SyntheticSample, generate_sample

__all__ = [
    "EegPlan",
    "SessionPlan",
    "SyntheticSample",
    "generate_dataset",
    "generate_sample",
    "plan_dataset",
    "render_session",
    "session_complete",
    "session_latents",
]
