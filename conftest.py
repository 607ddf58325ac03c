"""Settings for every test in the repository (core, plugins, end to end)."""

from __future__ import annotations

import logging

from hypothesis import HealthCheck, settings

# The machine is shared and has two cores: no wall-clock deadlines on property tests.
settings.register_profile(
    "trawl", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=300
)
settings.load_profile("trawl")

logging.getLogger("httpx").setLevel(logging.WARNING)
