"""The part of a run's manifest both backends write the same way.

What ran (name, backend, seed, the resolved scenario), on how many nodes, with which
protocol settings; each runner appends its own keys (the simulator its mechanisms and
networks, the emulator its capabilities, underlay and timings).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from overlaysim.metrics.manifest import base_manifest, protocol_settings
from overlaysim.scenario.schema import Scenario


def run_manifest(
    scenario: Scenario,
    seed: int,
    *,
    backend: str,
    capabilities: Mapping[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The manifest of a run of ``scenario`` with ``seed`` on ``backend``; ``extra`` keys
    follow the common ones in the order given."""
    return base_manifest(
        name=scenario.name,
        backend=backend,
        seed=seed,
        scenario=scenario.resolved(),
        capabilities=capabilities or {},
        nodes=len(scenario.resolved_topology.hosts),
        # the ESP sequence limit is a data-path setting, not a protocol config field; the
        # resolved scenario (above) records it
        protocol=protocol_settings(
            scenario.profile, scenario.protocol.model_dump(exclude={"esp_seq_limit"})
        ),
        **extra,
    )
