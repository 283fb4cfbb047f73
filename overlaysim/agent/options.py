"""overlayd's configuration: :class:`AgentConfig` and the command line that fills it.

Kept apart from the daemon so the options (and the gossip key file format) can be read
and tested without the asyncio machinery.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from overlaysim.agent import names
from overlaysim.agent.esp_tunnel import ESP_PORT
from overlaysim.agent.manager import MANAGER_PORT
from overlaysim.agent.transport import DEFAULT_PORT
from overlaysim.core import esp
from overlaysim.core.config import PROFILES


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentConfig:
    """Everything the command line sets (see ``--help``)."""

    name: str
    bind: str
    port: int = DEFAULT_PORT
    seeds: tuple[str, ...] = ()
    manager: str | None = None
    serve_manager: bool = False
    control: Path | None = None
    log: Path | None = None
    profile: str = "lan"
    #: Per-field overrides of the preset: {"membership": {...}, "tables": {...}}.
    protocol: dict[str, dict[str, Any]] = field(default_factory=dict)
    vxlan_port: int = 4789
    underlay_mtu: int = 1500
    record: Path | None = None
    epoch: int = 0
    prefix: str = names.PREFIX
    seed: int | None = None
    #: Period of the kernel-versus-tables reconcile.
    reconcile_interval: float = 10.0
    #: After a graceful leave, keep running this long so the leave spreads.
    leave_grace: float = 1.0
    #: Retry joining through the seeds this often while no other member is known.
    join_retry: float = 1.0
    #: Period of ``traffic`` log lines.
    traffic_interval: float = 1.0
    #: UDP port of the encrypted data path (ESP-in-UDP).
    esp_port: int = ESP_PORT
    #: Highest ESP sequence number per SA (default: the 32-bit space minus the rekey
    #: margin; lowered to make sequence exhaustion happen in seconds).
    esp_seq_limit: int = esp.MAX_SEQ
    #: How often a node holding network keys asks the manager for a newer ring.
    key_poll: float = 5.0
    #: Gossip (and manager channel) keys, primary first; empty: cleartext control plane.
    gossip_keys: tuple[bytes, ...] = ()
    #: Manager only: rotate the network keys this often (seconds; 0 = never).
    key_rotation: float = 12 * 3600.0
    #: Log every table-gossip datagram sent and received (``gossip_tx``/``gossip_rx``),
    #: for the spread analysis (bench/spread.py). Off by default: it grows with churn.
    trace_gossip: bool = False

    @property
    def addr(self) -> str:
        return f"{self.bind}:{self.port}"

    @property
    def manager_addr(self) -> str | None:
        if self.manager:
            return self.manager
        return f"{self.bind}:{MANAGER_PORT}" if self.serve_manager else None


_PROTOCOL_KEYS = {"membership", "tables", "variant", "extensions"}


def _protocol_arg(text: str) -> dict[str, dict[str, Any]]:
    if not text:
        return {}
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise SystemExit(f"--protocol-json: not JSON: {exc}") from None
    if not isinstance(data, dict) or not set(data) <= _PROTOCOL_KEYS:
        raise SystemExit(
            '--protocol-json: expected {"membership": {...}, "tables": {...}, '
            '"variant": "overlaysim"|"docker", "extensions": {...}}'
        )
    return data


def read_keyfile(path: Path) -> tuple[bytes, ...]:
    """Gossip keys from ``path``: one base64 key per line (16, 24 or 32 bytes), primary
    first; blank lines and ``#`` comments are skipped. SystemExit with the line at fault."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise SystemExit(f"--gossip-keyfile {path}: {exc.strerror}") from None
    keys = []
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keys.append(_gossip_key(line, f"--gossip-keyfile {path}:{n}"))
    if not keys:
        raise SystemExit(f"--gossip-keyfile {path}: no key in the file")
    return tuple(keys)


def _seq_limit(text: str) -> int:
    try:
        return esp.check_max_seq(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer in 1..{esp.MAX_SEQ}") from None


def _gossip_key(text: str, where: str) -> bytes:
    try:
        key = base64.b64decode(text, validate=True)
    except ValueError:
        raise SystemExit(f"{where}: not base64") from None
    if len(key) not in (16, 24, 32):
        raise SystemExit(f"{where}: key is {len(key)} bytes; expected 16, 24 or 32 (base64)")
    return key


def parse_args(argv: list[str] | None = None) -> AgentConfig:
    """The command line as an :class:`AgentConfig`."""
    p = argparse.ArgumentParser(prog="overlayd", description="overlaysim live agent")
    p.add_argument("--name", required=True, help="node name (unique in the cluster)")
    p.add_argument(
        "--bind", required=True, help="underlay IPv4 address to listen on (also the VTEP)"
    )
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="cluster port, UDP and TCP")
    p.add_argument(
        "--seeds", default="", help="comma-separated ip[:port] of agents to join through"
    )
    p.add_argument("--manager", default=None, help="manager ip[:port] (default port 2377)")
    p.add_argument("--serve-manager", action="store_true", help="also run the manager API here")
    p.add_argument("--control", type=Path, default=None, help="unix socket of the control API")
    p.add_argument("--log", type=Path, default=None, help="JSON-lines event log")
    p.add_argument("--profile", choices=PROFILES, default="lan", help="protocol timing preset")
    p.add_argument(
        "--protocol-json",
        default="",
        help='per-field overrides of the preset, e.g. {"membership": {"lifeguard": false}}',
    )
    p.add_argument("--vxlan-port", type=int, default=4789)
    p.add_argument("--underlay-mtu", type=int, default=1500)
    p.add_argument("--record", type=Path, default=None, help="record of created kernel objects")
    p.add_argument("--epoch", type=int, default=None, help="boot epoch (default: ms since 1970)")
    p.add_argument("--prefix", default=names.PREFIX, help="name prefix of created namespaces")
    p.add_argument("--seed", type=int, default=None, help="seed of the protocol's randomness")
    p.add_argument("--reconcile-interval", type=float, default=10.0)
    p.add_argument("--leave-grace", type=float, default=1.0)
    p.add_argument(
        "--gossip-key",
        action="append",
        default=[],
        metavar="BASE64",
        help="seal gossip and manager traffic with this AES key (16/24/32 bytes, base64; "
        "repeat to install several, the first is primary). Visible in ps: prefer the keyfile",
    )
    p.add_argument(
        "--gossip-keyfile",
        type=Path,
        default=None,
        help="file with one base64 gossip key per line, primary first",
    )
    p.add_argument(
        "--key-rotation",
        type=float,
        default=12 * 3600.0,
        help="manager: seconds between network-key rotations (0: never; default 12 h)",
    )
    p.add_argument(
        "--esp-port", type=int, default=ESP_PORT, help="UDP port of encrypted networks' ESP"
    )
    p.add_argument(
        "--esp-seq-limit",
        type=_seq_limit,
        default=esp.MAX_SEQ,
        metavar="N",
        help="highest ESP sequence number one SA seals before it needs a new key "
        f"(1..{esp.MAX_SEQ}, the default)",
    )
    p.add_argument(
        "--key-poll", type=float, default=5.0, help="seconds between network-key ring checks"
    )
    p.add_argument(
        "--trace-gossip",
        action="store_true",
        default=os.environ.get("OVERLAYSIM_TRACE_GOSSIP", "") == "1",
        help="log each table-gossip datagram sent and received (default: "
        "$OVERLAYSIM_TRACE_GOSSIP=1)",
    )
    a = p.parse_args(argv)
    seeds = []
    for item in filter(None, (s.strip() for s in a.seeds.split(","))):
        seeds.append(item if ":" in item else f"{item}:{a.port}")
    gossip_keys = tuple(_gossip_key(k, "--gossip-key") for k in a.gossip_key)
    if a.gossip_keyfile is not None:
        gossip_keys += read_keyfile(a.gossip_keyfile)
    manager = a.manager
    if manager and ":" not in manager:
        manager = f"{manager}:{MANAGER_PORT}"
    return AgentConfig(
        name=a.name,
        bind=a.bind,
        port=a.port,
        seeds=tuple(seeds),
        manager=manager,
        serve_manager=a.serve_manager,
        control=a.control,
        log=a.log,
        profile=a.profile,
        protocol=_protocol_arg(a.protocol_json),
        vxlan_port=a.vxlan_port,
        underlay_mtu=a.underlay_mtu,
        record=a.record,
        epoch=a.epoch if a.epoch is not None else time.time_ns() // 1_000_000,
        prefix=a.prefix,
        seed=a.seed,
        reconcile_interval=a.reconcile_interval,
        leave_grace=a.leave_grace,
        esp_port=a.esp_port,
        key_poll=a.key_poll,
        esp_seq_limit=a.esp_seq_limit,
        gossip_keys=gossip_keys,
        trace_gossip=a.trace_gossip,
        key_rotation=a.key_rotation,
    )
