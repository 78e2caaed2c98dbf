"""MEDKV_TEST_ONLY_CLOCK_OFFSET_S (node/test_clock.py): parsed strictly, applied loudly."""

from __future__ import annotations

import logging
import time

import pytest

from node.test_clock import ENV, ClockOffsetError, install_from_env, offset_from_env


def test_unset_or_empty_means_no_offset() -> None:
    assert offset_from_env({}) == 0.0
    assert offset_from_env({ENV: " "}) == 0.0


@pytest.mark.parametrize("raw", ["fast", "nan", "inf", "1e12"])
def test_a_bad_offset_is_refused_naming_the_variable(raw: str) -> None:
    with pytest.raises(ClockOffsetError, match=ENV):
        offset_from_env({ENV: raw})


def test_install_offsets_the_wall_clock_not_the_monotonic_one_and_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # monkeypatch restores time.time / time.time_ns after the test.
    real_time, real_ns = time.time, time.time_ns
    monkeypatch.setattr(time, "time", real_time)
    monkeypatch.setattr(time, "time_ns", real_ns)
    mono = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="medkv.test_clock"):
        assert install_from_env({ENV: "86400"}) == 86_400.0
    assert abs(time.time() - real_time() - 86_400) < 1
    assert abs((time.time_ns() - real_ns()) / 1e9 - 86_400) < 1
    assert time.monotonic() - mono < 5  # untouched
    assert any("TEST ONLY" in r.getMessage() and ENV in r.getMessage() for r in caplog.records)
