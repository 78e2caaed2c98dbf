"""Shared pytest configuration: hypothesis profiles.

Choose with MEDKV_HYPOTHESIS_PROFILE (default: `ci` when CI=true, else `dev`):
  ci        bounded example counts, derandomized: CI time stays predictable
  dev       the default locally
  thorough  many more examples, for a soak before a release
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile(
    "dev", max_examples=100, deadline=None, print_blob=True
)
settings.register_profile(
    "thorough",
    max_examples=2000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
_default = "ci" if os.environ.get("CI") == "true" else "dev"
settings.load_profile(os.environ.get("MEDKV_HYPOTHESIS_PROFILE", _default))
