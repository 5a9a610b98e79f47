"""The style-control benchmark's model-vs-n-gram interval (benchmarks/style_control.py)."""

import importlib.util
from pathlib import Path

import numpy as np

spec = importlib.util.spec_from_file_location(
    "style_control", Path(__file__).resolve().parents[1] / "benchmarks" / "style_control.py")
style_control = importlib.util.module_from_spec(spec)
spec.loader.exec_module(style_control)


def _pieces(rng, centre: np.ndarray, n: int, spread: float) -> dict[str, np.ndarray]:
    """n pieces whose four histograms scatter around ``centre`` (normalized, like real pieces')."""
    h = np.abs(centre + rng.normal(0, spread, (n, len(centre))))
    h /= h.sum(1, keepdims=True)
    return {k: h for k in style_control.HISTOGRAMS}


def test_bootstrap_gap_separates_a_close_set_from_a_far_one_and_not_two_alike():
    rng = np.random.default_rng(1)
    centre = np.array([0.4, 0.3, 0.2, 0.1])
    real = {k: centre for k in style_control.HISTOGRAMS}
    close, far = _pieces(rng, centre, 64, 0.05), _pieces(rng, centre[::-1], 64, 0.05)
    gap = style_control.bootstrap_gap(close, far, real, rounds=500)
    assert gap["gap"] == (style_control.closeness(style_control.mean_histograms(close), real)
                          - style_control.closeness(style_control.mean_histograms(far), real))
    assert 0.3 < gap["lo"] < gap["gap"] < gap["hi"]  # the far set's overlap is about 0.6: a gap of ~0.4
    alike = style_control.bootstrap_gap(close, _pieces(rng, centre, 64, 0.05), real, rounds=500)
    assert alike["lo"] < 0 < alike["hi"]  # two draws of one distribution: the interval holds zero
    assert alike["hi"] - alike["lo"] < 0.05
