"""One labelled synthetic EEG in memory, with every latent parameter exposed (for tests, notebooks, debugging)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from hms_core.checks import check_option, check_range
from hms_core.constants import CLASSES, EEG_CHANNELS, EEG_WINDOW_S, SFREQ, SPEC_ROW_S
from hms_core.synthetic.background import draw_background_params
from hms_core.synthetic.generator import EegPlan, SessionPlan, draw_patient_style, plan_eeg, render_session

#: Most sub-window rows one generated sample may carry (50 s + 2 s per extra row).
MAX_SUB_WINDOWS = 100


@dataclass
class SyntheticSample:
    """``eeg`` (19, n_times) and ``ekg`` (n_times,) float32 microvolts at 200 Hz, plus the latent ``plan``."""

    eeg: np.ndarray
    ekg: np.ndarray
    plan: SessionPlan
    events: list[dict[str, Any]]

    @property
    def label(self) -> EegPlan:
        return self.plan.eegs[0]

    @property
    def params(self) -> dict[str, Any]:
        """Flat view: class, pattern parameters, background, style, votes and difficulty."""
        e = self.label
        return {
            "cls": e.cls, "pattern": e.pattern, "background": self.plan.background, "style": self.plan.style,
            "voltage_state": e.voltage_state, "votes": e.votes, "difficulty": e.difficulty, "n_raters": e.n_raters,
        }  # fmt: skip


def generate_sample(
    cls: str,
    seed: int = 0,
    *,
    n_sub: int = 1,
    pattern_overrides: dict[str, Any] | None = None,
    background_overrides: dict[str, Any] | None = None,
    style_overrides: dict[str, Any] | None = None,
    artifacts: bool = True,
) -> SyntheticSample:
    """Render one EEG of class ``cls`` (50 s + 2 s per extra sub-window) exactly as the data set generator does.

    Overrides replace drawn values (e.g. ``pattern_overrides={"rate_hz": 1.2}``,
    ``style_overrides={"line_uv": 20.0}``, ``background_overrides={"beta": 2.0, "alpha_amp": 0.0}``).
    """
    check_option("cls", cls, CLASSES)
    check_range("n_sub", n_sub, 1, MAX_SUB_WINDOWS)
    ss = np.random.SeedSequence([seed, 9, CLASSES.index(cls)])
    plan_ss, sig_ss = ss.spawn(2)
    rng = np.random.default_rng(plan_ss)
    style = draw_patient_style(rng) | dict(style_overrides or {})
    bg = draw_background_params(rng, style) | dict(background_overrides or {})
    duration = EEG_WINDOW_S + SPEC_ROW_S * (n_sub - 1)
    eeg = plan_eeg(rng, cls, 0, n_sub, style, bg, duration, pattern_overrides)
    if pattern_overrides and "voltage_state" in pattern_overrides:
        eeg.voltage_state = pattern_overrides["voltage_state"]
    plan = SessionPlan(
        index=0, split="sample", patient_index=0, duration_s=duration, background=bg, style=style, eegs=[eeg],
        signal_seed=[int(v) for v in sig_ss.generate_state(4)],
    )  # fmt: skip
    x, ekg, events = render_session(plan, artifacts=artifacts)
    if x.shape != (len(EEG_CHANNELS), duration * SFREQ) or ekg.shape != (duration * SFREQ,):
        raise RuntimeError(
            f"generate_sample({cls!r}, seed={seed}): render_session returned EEG {x.shape} and EKG {ekg.shape}; "
            f"expected ({len(EEG_CHANNELS)}, {duration * SFREQ}) and ({duration * SFREQ},)"
        )
    return SyntheticSample(eeg=x, ekg=ekg, plan=plan, events=events)
