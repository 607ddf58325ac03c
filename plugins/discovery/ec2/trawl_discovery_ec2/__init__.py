"""trawl discoverer for AWS EC2 instances: ``[[ec2]]``."""

from __future__ import annotations

from collections.abc import Callable

import trawl

from ._discoverer import EC2Config, EC2Discoverer, EC2Filter

__all__ = ["EC2Config", "EC2Discoverer", "EC2Filter"]


@trawl.hookimpl
def trawl_register_discoverers(register: Callable[[type[trawl.Discoverer]], None]) -> None:
    register(EC2Discoverer)
