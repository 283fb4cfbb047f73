"""Services across a manager restart, in scenario-driven emulation (as root).

A restarted manager starts with an empty IPAM. The emulator's restore reserves every
live service's VIP again at its address (``vip_reserve`` with ``ip``), so a service
created afterwards gets another VIP, and the old one still balances over its tasks;
the published ports come back too, and the manager host's new boot runs the mesh again.
About 20 s of scenario.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from overlaysim.emu import runner as emu_runner
from overlaysim.metrics.results import load_run
from overlaysim.scenario.loader import load_scenario

QUICKSTART = Path(__file__).resolve().parents[2] / "scenarios" / "quickstart.yaml"


def _vips(run: Path) -> dict[str, set[str]]:
    """Service -> the VIPs its tasks' entries on ``web`` carried, from every agent's log."""
    out: dict[str, set[str]] = {}
    for log in sorted((run / "agent-logs").glob("*.jsonl")):
        for line in log.read_text().splitlines():
            ev = json.loads(line)
            value = ev.get("value") or {}
            if ev.get("kind") != "entry_seen" or ev.get("network") != "web":
                continue  # (on the ingress network the tasks carry the ingress VIP)
            if value.get("service") and value.get("vip"):
                out.setdefault(value["service"], set()).add(value["vip"])
    return out


@pytest.mark.emu
def test_after_a_manager_restart_a_new_service_gets_another_vip(emu: None, tmp_path: Path) -> None:
    scenario = load_scenario(
        QUICKSTART,
        [
            "duration=22",
            "events=[{at: 1, action: service_create, name: api, network: web, replicas: 3,"
            " publish: ['8097:8080']},"
            " {at: 3, action: crash, host: h1}, {at: 5, action: restart, host: h1},"
            " {at: 12, action: service_create, name: api2, network: web, replicas: 1}]",
            "measure={probes: false, lb_probe: {service: api, client: c2, connections: 30}}",
        ],
    )
    status = emu_runner.run_emulation(scenario, tmp_path / "run", progress=False)
    assert status == "complete"
    run = load_run(tmp_path / "run")
    skipped = [
        *(run.metrics.get("skipped_steps") or []),
        *(run.manifest.get("skipped_steps") or []),
    ]
    assert skipped == [], skipped  # no VIP clash on restore, every step played
    vips = _vips(tmp_path / "run")
    assert set(vips) == {"api", "api2"} and all(len(v) == 1 for v in vips.values()), vips
    assert vips["api"] != vips["api2"], vips  # before the fix: the old VIP handed out again
    spread = run.metrics["lb_spread"]
    assert spread["vip"] in vips["api"]
    assert spread["connections"] == 30 and spread["failed"] == 0 and spread["stray"] == {}
    assert sum(n > 0 for n in spread["per_task"].values()) >= 2, spread
    print(f"VIPs {vips}; through api's VIP after the restart: {spread['per_task']}")
    # the manager host's new boot got the routing mesh back (told by the restore)
    h1 = (tmp_path / "run" / "agent-logs" / "h1.jsonl").read_text().splitlines()
    boots = [i for i, line in enumerate(h1) if json.loads(line).get("kind") == "start"]
    assert len(boots) == 2, boots
    after = [json.loads(line) for line in h1[boots[1] :]]
    assert any(e.get("kind") == "names" and e.get("container") == "ingress.h1" for e in after)
