"""The bridge-netfilter sysctls, held off machine-wide while any run lives."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from overlaysim.emu.record import STATE_DIR, RunRecord, state_lock

log = logging.getLogger(__name__)

BRIDGE_NF_SYSCTLS = tuple(
    Path(f"/proc/sys/net/bridge/bridge-nf-call-{t}tables") for t in ("arp", "ip", "ip6")
)


#: Machine-wide: who holds the bridge-nf sysctls at 0, and their original values.
BRIDGE_NF_STATE = STATE_DIR / "bridge-nf.json"


def hold_bridge_nf(record: Path) -> bool:
    """Turn off bridge netfilter calls while the run recorded at ``record`` lives.

    With ``br_netfilter`` active, frames crossing the underlay's bridges pass through
    the root namespace's iptables/nftables, whose rules (a Docker host's FORWARD drop,
    say) are not ours to reason about. The sysctls are global, so the holders are kept
    in one machine-wide file (:data:`BRIDGE_NF_STATE`) whatever folder a run records
    into: the first holder saves the original values, the last to go restores them.
    Returns False when there is nothing to turn off (or it cannot be).
    """
    present = [p for p in BRIDGE_NF_SYSCTLS if p.exists()]
    if not present:
        return False
    with state_lock(BRIDGE_NF_STATE.parent):
        state = _read_json(BRIDGE_NF_STATE) or {
            "original": {str(p): p.read_text().strip() for p in present},
            "holders": [],
        }
        try:
            for p in present:
                p.write_text("0")
        except OSError as exc:  # read-only /proc/sys (some containers): bridges still work
            log.warning("cannot turn off bridge netfilter (%s); root firewall rules apply", exc)
            return False
        if str(record) not in state["holders"]:
            state["holders"].append(str(record))
        _write_json(BRIDGE_NF_STATE, state)
    return True


def release_bridge_nf(record: Path | None) -> list[str]:
    """Drop ``record``'s hold (None: only prune dead holders); restore when none remain."""
    with state_lock(BRIDGE_NF_STATE.parent):
        state = _read_json(BRIDGE_NF_STATE)
        if state is None:
            return []
        mine = str(record) if record is not None else None
        holders = [h for h in state["holders"] if h != mine and _record_is_live(Path(h))]
        if holders:
            state["holders"] = holders
            _write_json(BRIDGE_NF_STATE, state)
            return []
        restored = []
        for name, value in state["original"].items():
            p = Path(name)
            if p.exists():
                p.write_text(value)
                restored.append(f"sysctl {p.name}={value} restored")
        BRIDGE_NF_STATE.unlink()
        return restored


def _record_is_live(path: Path) -> bool:
    try:
        return RunRecord.load(path).is_live()
    except (OSError, ValueError):
        return False


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, sort_keys=True))
    tmp.replace(path)
