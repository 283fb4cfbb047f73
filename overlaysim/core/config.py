"""Protocol timing presets, after memberlist's LAN/WAN/local configs and NetworkDB.

All durations are seconds (floats). ``lan()`` is the reference; ``wan()`` and
``local()`` override a few fields, the way memberlist derives its presets.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class MembershipConfig:
    """SWIM + Lifeguard failure detector settings."""

    #: Time between failure-detector probes. Larger: less traffic, slower detection.
    probe_interval: float = 1.0
    #: Wait for a direct ack before indirect probes. Scaled by awareness (1..max).
    probe_timeout: float = 0.5
    #: Members asked to probe a target indirectly when the direct probe fails.
    indirect_checks: int = 3
    #: Suspicion timeout = suspicion_mult * max(1, log10(N)) * probe_interval (the minimum).
    suspicion_mult: int = 4
    #: Maximum suspicion timeout = suspicion_max_timeout_mult * minimum; it starts
    #: at the maximum and shrinks towards the minimum as independent confirmations arrive.
    suspicion_max_timeout_mult: int = 6
    #: Each update is piggybacked retransmit_mult * ceil(log10(N + 1)) times.
    retransmit_mult: int = 4
    #: Period of dedicated gossip messages and fan-out per period.
    gossip_interval: float = 0.2
    gossip_nodes: int = 3
    #: Keep gossiping to dead nodes this long so they learn they were declared dead.
    gossip_to_dead_time: float = 30.0
    #: Full state sync with one random member; scaled up above 32 nodes like memberlist.
    push_pull_interval: float = 30.0
    #: Local health (Lifeguard awareness): timeouts scale by (1 + score), score < max.
    awareness_max_multiplier: int = 8
    #: Dead members are forgotten after this long (a tombstone for rejoin ordering).
    dead_node_reclaim_time: float = 0.0
    #: Largest datagram the sender fills with piggybacked updates.
    udp_buffer_size: int = 1400
    #: Lifeguard's refinements: local-health awareness, a suspicion timeout that shrinks
    #: with independent confirmations, nacks from indirect probers, and the buddy system.
    #: False gives plain SWIM as memberlist had it before Lifeguard: a fixed suspicion
    #: timeout (the minimum), no awareness, no nacks, no Suspect on pings of a suspect.
    lifeguard: bool = True
    #: Boot epochs: a restarted node announces a new epoch that replaces everything known
    #: about its previous boot. False: every boot is epoch 0 (memberlist, NetworkDB).
    epochs: bool = True
    #: Dead notice: answer a ping from a member we hold DEAD with that Dead, so it
    #: refutes within one probe round after a heal (memberlist has no such notice).
    dead_notice: bool = True
    #: Heal rule: a Dead relayed by another member about a member we heard from directly
    #: within the last ``heal_window_mult`` minimum suspicion timeouts is taken as a
    #: Suspect the accused can refute, not as a verdict; and a member we suspect that
    #: talks to us is told so, so it refutes. 0: off (memberlist's behaviour).
    heal_window_mult: float = 2.0
    #: NetworkDB's reconnect loop: this often, ask one random member we hold DEAD for a
    #: full state exchange (a join), so a healed partition rejoins. 0: off.
    reconnect_interval: float = 0.0

    @classmethod
    def lan(cls) -> MembershipConfig:
        return cls()

    @classmethod
    def wan(cls) -> MembershipConfig:
        return dataclasses.replace(
            cls(),
            probe_interval=5.0,
            probe_timeout=3.0,
            suspicion_mult=6,
            push_pull_interval=60.0,
            gossip_nodes=4,
            gossip_interval=0.5,
            gossip_to_dead_time=60.0,
        )

    @classmethod
    def local(cls) -> MembershipConfig:
        return dataclasses.replace(
            cls(),
            indirect_checks=1,
            retransmit_mult=2,
            suspicion_mult=3,
            push_pull_interval=15.0,
            probe_timeout=0.2,
            probe_interval=1.0,
            gossip_interval=0.1,
            gossip_to_dead_time=15.0,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class TableConfig:
    """NetworkDB-like replicated table settings."""

    #: Period of per-network table gossip and fan-out (only to nodes on that network).
    gossip_interval: float = 0.2
    gossip_nodes: int = 3
    #: Each table event is retransmitted retransmit_mult * ceil(log10(N + 1)) times,
    #: N being the number of nodes on the network.
    retransmit_mult: int = 4
    #: Anti-entropy: bulk sync all shared networks with one random peer this often.
    bulk_sync_interval: float = 30.0
    #: Join sync: a node joining a network bulk-syncs at once with this many random
    #: peers it already knows are on it; 0: with every one of them. NetworkDB's
    #: JoinNetwork syncs with every one (``bulkSync(networkNodes, all=true)``), but our
    #: bulk syncs also carry every attachment, which NetworkDB's do not: with 0 a
    #: rejoining node hands its new attachment to every peer at once and the leave/rejoin
    #: race of moby#47728 no longer shows. Both variants use 1 (docs/variants.md).
    join_sync_peers: int = 1
    #: Join resync: one more bulk round this many seconds after joining a network on
    #: which peers were known (0: off, NetworkDB's single join sync). A host joining
    #: while entries are still spreading can miss them: its join sync came too early,
    #: and their gossip was spent on the peers known before the join was
    #: (docs/emulation-scale.md).
    join_resync_delay: float = 2.0
    #: Bulk-sync rebroadcast: a version first learned from a bulk sync is gossiped on,
    #: as NetworkDB does once its own join sync is done, unless the network's broadcast
    #: queue already holds this many records (NetworkDB's maxQueueLenBroadcastOnSync,
    #: 500). 0: never (a bulk sync only repairs the node that receives it).
    bulk_rebroadcast_limit: int = 500
    #: Tombstones (deleted entries) are kept this long so late adds cannot resurrect them.
    reap_interval: float = 1800.0
    #: Largest datagram the sender fills with table events.
    udp_buffer_size: int = 1400
    #: Recovery sync: bulk sync with a node back from a false alarm at once, instead of
    #: waiting for the periodic bulk sync (NetworkDB has only the periodic one).
    recovery_sync: bool = True
    #: The agent's periodic reconcile of kernel FDB/neighbour entries against the tables
    #: (a data-plane setting carried here; the simulator has no kernel to drift).
    reconcile: bool = True
    #: Tombstones for unknown entries: a gossiped delete of an entry we never held is
    #: stored (and spread), so an add of that entry arriving later is refused as older.
    #: False: NetworkDB's rule, an async delete of an unknown entry is dropped (only a
    #: bulk sync stores it), so an add that arrives after its delete makes it live again.
    unknown_tombstones: bool = True
    #: Local tombstones: entries hidden because their owner left the network are our
    #: conclusion, not a version, so the owner's same version brings them back (a leave
    #: that arrives after the rejoin's entries cannot bury them). False: NetworkDB
    #: before moby#50342 forged a tombstone at the entry's own Lamport time, so the
    #: same version is refused until the owner writes a newer one.
    local_tombstones: bool = True
    #: Leave clock: a leave states its owner's entry clock, and an entry of the same boot
    #: written later (a larger Lamport time) proves the owner rejoined, so it is kept
    #: even when the rejoin's attachment has not arrived yet. False: NetworkDB's rule,
    #: every entry of an owner held as having left the network is dropped, and one that
    #: outran the rejoin's announcement waits for a bulk sync (moby#47728's race).
    leave_clock: bool = True
    #: Overlay MTU from the underlay's: the agent derives each network's MTU from its
    #: underlay interface (minus VXLAN, and ESP when encrypted). False: libnetwork's
    #: fixed assumption of a 1500-byte underlay (1450 for VXLAN), whatever the real one
    #: (libnetwork#491, libnetwork#2661). A data-plane setting read by the agent.
    mtu_from_underlay: bool = True
    #: Rekey before the sequence space runs out: when an SA of an encrypted network has
    #: sealed its last sequence number, the agent seals with the ring's ``next`` key
    #: (every peer already receives it) and asks the manager to rotate now. False:
    #: Docker's behaviour, packets are dropped until the rotation timer (moby#52005).
    #: A data-plane setting read by the agent.
    rekey_with_next: bool = True

    @classmethod
    def lan(cls) -> TableConfig:
        return cls()

    @classmethod
    def wan(cls) -> TableConfig:
        return dataclasses.replace(
            cls(), gossip_interval=0.5, gossip_nodes=4, bulk_sync_interval=60.0
        )

    @classmethod
    def local(cls) -> TableConfig:
        return dataclasses.replace(
            cls(), gossip_interval=0.1, retransmit_mult=2, bulk_sync_interval=15.0
        )


PROFILES = ("lan", "wan", "local")

#: Fields that must be above zero: periods (a zero period would fire forever at one
#: instant), the probe timeout and the datagram budget. Every other number may be 0
#: (0 means "off" or "none" there); no field takes a negative value.
POSITIVE_FIELDS = frozenset(
    {
        "probe_interval",
        "probe_timeout",
        "gossip_interval",
        "push_pull_interval",
        "bulk_sync_interval",
        "reap_interval",
        "udp_buffer_size",
    }
)

#: Protocol variants: ``overlaysim`` (ours, every extension on) and ``docker`` (libnetwork's
#: NetworkDB on memberlist; docs/variants.md maps each setting to its source).
VARIANTS = ("overlaysim", "docker")


@dataclass(frozen=True, slots=True)
class Extension:
    """One switchable idea of ours: a config field and its value when on and off."""

    name: str
    section: str  # "membership" or "tables"
    field: str
    on: bool | float
    off: bool | float


#: ``protocol.extensions`` switches, in the order docs/variants.md lists them.
EXTENSIONS: dict[str, Extension] = {
    e.name: e
    for e in (
        Extension("epochs", "membership", "epochs", True, False),
        Extension("dead_notice", "membership", "dead_notice", True, False),
        Extension("heal_rule", "membership", "heal_window_mult", 2.0, 0.0),
        Extension("lifeguard", "membership", "lifeguard", True, False),
        Extension("recovery_sync", "tables", "recovery_sync", True, False),
        Extension("join_resync", "tables", "join_resync_delay", 2.0, 0.0),
        Extension("reconcile", "tables", "reconcile", True, False),
        Extension("unknown_tombstones", "tables", "unknown_tombstones", True, False),
        Extension("local_tombstones", "tables", "local_tombstones", True, False),
        Extension("leave_clock", "tables", "leave_clock", True, False),
        Extension("mtu_from_underlay", "tables", "mtu_from_underlay", True, False),
        Extension("rekey_with_next", "tables", "rekey_with_next", True, False),
    )
}

#: What the ``docker`` variant changes besides switching our extensions off (Lifeguard
#: stays: memberlist has it). Timers not listed are the same as ours.
_DOCKER_MEMBERSHIP = {"reconnect_interval": 1.0, "dead_node_reclaim_time": 24 * 3600.0}
_DOCKER_OFF = (
    "epochs",
    "dead_notice",
    "heal_rule",
    "recovery_sync",
    "join_resync",
    "reconcile",
    "unknown_tombstones",
    "local_tombstones",
    "leave_clock",
    "mtu_from_underlay",
    "rekey_with_next",
)


def profile(name: str) -> tuple[MembershipConfig, TableConfig]:
    """Return (membership, table) configs for a preset name."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; expected one of {', '.join(PROFILES)}")
    return getattr(MembershipConfig, name)(), getattr(TableConfig, name)()


def configs(
    name: str,
    membership: dict | None = None,
    tables: dict | None = None,
    variant: str = "overlaysim",
    extensions: dict[str, bool] | None = None,
) -> tuple[MembershipConfig, TableConfig]:
    """A preset for a scenario's ``protocol`` section.

    Layers, later ones winning: the timing profile, the variant, the extension switches,
    then per-field overrides.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    m, t = profile(name)
    switches = {n: n not in _DOCKER_OFF for n in EXTENSIONS} if variant == "docker" else {}
    bad = sorted(set(extensions or {}) - set(EXTENSIONS))
    if bad:
        raise ValueError(
            f"unknown extension(s) {', '.join(bad)}; expected one of {', '.join(EXTENSIONS)}"
        )
    switches.update(extensions or {})
    layer: dict[str, dict] = {"membership": {}, "tables": {}}
    if variant == "docker":
        layer["membership"].update(_DOCKER_MEMBERSHIP)
    for n, on in switches.items():
        e = EXTENSIONS[n]
        layer[e.section][e.field] = e.on if on else e.off
    m, t = with_overrides(m, layer["membership"]), with_overrides(t, layer["tables"])
    return with_overrides(m, membership), with_overrides(t, tables)


def extension_states(m: MembershipConfig, t: TableConfig) -> dict[str, bool]:
    """Which extensions a pair of configs has on (for manifests and reports)."""
    cfgs = {"membership": m, "tables": t}
    return {n: bool(getattr(cfgs[e.section], e.field)) for n, e in EXTENSIONS.items()}


def with_overrides(cfg, overrides: dict | None):
    """``cfg`` with some fields replaced; unknown names raise ValueError naming them."""
    if not overrides:
        return cfg
    names = {f.name for f in dataclasses.fields(cfg)}
    bad = sorted(set(overrides) - names)
    if bad:
        raise ValueError(
            f"unknown {type(cfg).__name__} field(s) {', '.join(bad)}; "
            f"expected one of {', '.join(sorted(names))}"
        )
    return dataclasses.replace(cfg, **overrides)


def retransmit_limit(mult: int, n: int) -> int:
    """memberlist's retransmit budget: mult * ceil(log10(n + 1))."""
    return mult * math.ceil(math.log10(n + 1))


def push_pull_scale(interval: float, n: int) -> float:
    """memberlist's pushPullScale: back off the sync interval above 32 nodes."""
    threshold = 32
    if n <= threshold:
        return interval
    mult = math.ceil(math.log2(n) - math.log2(threshold)) + 1.0
    return interval * mult
