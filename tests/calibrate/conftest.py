"""Fixtures for calibration tests: the synthetic toy profile, a fake timeline and meter, a stand-in pynvml."""

from __future__ import annotations

from pathlib import Path

import pytest

from tokenjoule.calibrate.measure.fake import FakeMeter, FakeTimeline
from tokenjoule.calibrate.profile import GPUProfile, load_profile

TOY_PROFILE_PATH = Path(__file__).parent.parent / "fixtures" / "profiles" / "toy_h100_llama-3.1-8b.json"


@pytest.fixture(autouse=True)
def _torch_decode_attention(monkeypatch):
    """Engines built here use the torch decode attention: tests/kernels' conftest turns Triton's CPU interpreter on
    for the whole session, and it is minutes slower on a calibration sweep; the kernel is tested in tests/kernels."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


@pytest.fixture
def toy_profile_path() -> Path:
    """Path of the synthetic toy H100 x Llama-3.1-8B profile (marked synthetic in its notes and method)."""
    return TOY_PROFILE_PATH


@pytest.fixture
def toy_profile() -> GPUProfile:
    """The synthetic toy profile, loaded."""
    return load_profile(TOY_PROFILE_PATH)


@pytest.fixture
def timeline() -> FakeTimeline:
    """A simulated clock at 60 W idle per GPU."""
    return FakeTimeline(idle_power_w=60.0)


@pytest.fixture
def fake_meter(timeline: FakeTimeline) -> FakeMeter:
    """A fake NVML-like meter on one GPU, ticking every 100 ms with a 37 ms phase."""
    return FakeMeter(timeline, (0,), update_period_s=0.1, phase_s=0.037)
