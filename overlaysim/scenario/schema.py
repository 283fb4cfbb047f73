"""The scenario and topology-file schema (pydantic models) and the error they raise.

The models check each field alone: types, ranges, names, unknown fields. What needs several
fields (named hosts exist, the timeline makes sense) is in ``checks``; reading files and
``--set`` overrides is in ``loader``. Every problem becomes a ``Problem``; ``ScenarioError``
reports them all at once, each with the file, the field path, the value and what was
expected. ``docs/scenarios.md`` is the reference for every field.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    StringConstraints,
    Tag,
    field_validator,
)

from overlaysim.errors import UserError
from overlaysim.scenario.topology import LinkSpec, Topology

# ---------------------------------------------------------------------------- errors

#: What a name must look like; names become namespace, folder and table keys.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
NAME_EXPECTED = "a name of letters, digits, '.', '_' or '-' starting with a letter or digit"
_MAX_SHOWN = 50  # problems printed in one message; all stay in ``ScenarioError.problems``


@dataclass(frozen=True, slots=True, kw_only=True)
class Problem:
    """One thing wrong with a scenario or topology file.

    ``path`` is the field path (``events[3].percent``; empty for the whole document) and
    ``message`` says what the value is and what was expected. ``source`` names another file
    than the scenario's (a topology file); ``line``/``column`` point into the YAML text.
    """

    path: str
    message: str
    source: str | None = None
    line: int | None = None
    column: int | None = None
    note: str | None = None

    @classmethod
    def invalid(cls, path: str, value: Any, expected: str, **kw: Any) -> Problem:
        return cls(path=path, message=f"{show(value)} is not valid: expected {expected}", **kw)

    @classmethod
    def missing(cls, path: str, expected: str, **kw: Any) -> Problem:
        return cls(path=path, message=f"missing: expected {expected}", **kw)

    def render(self, default_source: str) -> str:
        """One line: ``file: path: message``, or ``file:line:col: message`` for syntax."""
        where = self.source or default_source
        if self.column is not None:
            where = f"{where}:{self.line}:{self.column}"
        text = f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"
        if self.note:
            text += f" ({self.note})"
        elif self.line is not None and self.column is None:
            text += f" (line {self.line})"
        return text


class ScenarioError(UserError, ValueError):
    """A scenario (or topology file) is invalid; ``problems`` lists every reason."""

    def __init__(self, source: str, problems: Sequence[Problem]) -> None:
        self.source = source
        self.problems = tuple(problems)
        lines = [p.render(source) for p in self.problems[:_MAX_SHOWN]]
        if len(self.problems) > _MAX_SHOWN:
            lines.append(f"{source}: ... and {len(self.problems) - _MAX_SHOWN} more problems")
        super().__init__("\n".join(lines) or f"{source}: invalid")

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across worker processes
        return (type(self), (self.source, self.problems))


def show(value: Any, limit: int = 60) -> str:
    """A short rendering of a value for messages: strings quoted, long values cut."""
    if isinstance(value, str):
        text = f'"{value}"'
    elif isinstance(value, float) and value.is_integer():
        text = str(int(value))
    elif isinstance(value, list | tuple | dict):
        text = json.dumps(value, default=str)
    else:
        text = repr(value)
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = "null"
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------- base types


class StrictModel(BaseModel):
    """Base: unknown fields are errors, values are immutable, numbers must be finite."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN, max_length=63)]
HostPair = tuple[Name, Name]
_OptPositive = Field(None, gt=0, description="a number of seconds greater than 0")


class Link(StrictModel):
    """Properties of an underlay link; omitted fields take the defaults shown."""

    latency_ms: float = Field(0.5, ge=0, description="one-way latency in milliseconds")
    bandwidth_mbps: float = Field(1000.0, gt=0, description="capacity in Mbit/s")
    loss_pct: float = Field(0.0, ge=0, le=100, description="random loss in percent")

    def to_spec(self) -> LinkSpec:
        return LinkSpec(
            latency_ms=self.latency_ms, bandwidth_mbps=self.bandwidth_mbps, loss_pct=self.loss_pct
        )


class FabricLink(Link):
    """A leaf-to-spine link: faster than a host link by default."""

    bandwidth_mbps: float = Field(10000.0, gt=0, description="capacity in Mbit/s")


class WanLink(Link):
    """The slow link between two sites."""

    latency_ms: float = Field(30.0, ge=0, description="one-way latency in milliseconds")
    bandwidth_mbps: float = Field(100.0, gt=0, description="capacity in Mbit/s")


# ---------------------------------------------------------------------------- topologies


class StarTopology(StrictModel):
    """``hosts`` hosts h1..hN on one switch s1."""

    generator: Literal["star"]
    hosts: int = Field(ge=1, le=1_000_000, description="the number of hosts")
    link: Link = Field(default_factory=Link, description="a link (host to switch)")


class LeafSpineTopology(StrictModel):
    """Spines s1..sS, leaves after them, ``hosts_per_leaf`` hosts on each leaf."""

    generator: Literal["leaf-spine"]
    spines: int = Field(2, ge=1, le=1000, description="the number of spine switches")
    leaves: int = Field(4, ge=1, le=10_000, description="the number of leaf switches")
    hosts_per_leaf: int = Field(4, ge=1, le=100_000, description="hosts on each leaf")
    link: Link = Field(default_factory=Link, description="a link (host to leaf)")
    uplink: FabricLink = Field(default_factory=FabricLink, description="a link (leaf to spine)")


class TwoSiteTopology(StrictModel):
    """Two sites, each one switch (s1, s2) with ``hosts_per_site`` hosts, joined by a WAN link."""

    generator: Literal["two-site"]
    hosts_per_site: int = Field(ge=1, le=500_000, description="hosts in each site")
    link: Link = Field(default_factory=Link, description="a link (host to its site switch)")
    wan_link: WanLink = Field(default_factory=WanLink, description="a link (s1 to s2)")


class RandomTopology(StrictModel):
    """Hosts spread round-robin over a random connected graph of switches."""

    generator: Literal["random"]
    hosts: int = Field(ge=1, le=1_000_000, description="the number of hosts")
    switches: int | None = Field(
        None, ge=1, le=100_000, description="the number of switches (default ceil(hosts / 8))"
    )
    degree: float = Field(3.0, ge=0, description="the mean number of links per switch")
    seed: int | None = Field(None, description="a graph seed (default: the scenario's seed)")
    link: Link = Field(default_factory=Link, description="a link (host to switch)")
    switch_link: Link = Field(default_factory=Link, description="a link (switch to switch)")


class TopologyLink(StrictModel):
    """One link of a topology file; unset properties come from the file's ``defaults``."""

    a: Name = Field(description="a host or switch name")
    b: Name = Field(description="a host or switch name")
    latency_ms: float | None = Field(None, ge=0, description="one-way latency in milliseconds")
    bandwidth_mbps: float | None = Field(None, gt=0, description="capacity in Mbit/s")
    loss_pct: float | None = Field(None, ge=0, le=100, description="random loss in percent")


class TopologyDoc(StrictModel):
    """A topology file (``topologies/*.yaml``), or the same written inline in a scenario."""

    name: Name | None = Field(None, description="a topology name (default: the file name)")
    hosts: tuple[Name, ...] = Field(
        min_length=1, description="a list of host names, or a count N for h1..hN"
    )
    switches: tuple[Name, ...] = Field((), description="a list of switch names")
    links: tuple[TopologyLink, ...] = Field(description="a list of links {a, b, ...}")
    defaults: Link = Field(default_factory=Link, description="link properties for every link")

    @field_validator("hosts", mode="before")
    @classmethod
    def _count_to_names(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            if value < 1:
                raise ValueError("a list of host names, or a count of at least 1")
            return [f"h{i}" for i in range(1, value + 1)]
        return value


class TopologyFile(StrictModel):
    """A reference to a topology file: relative to the scenario file, then the repository."""

    file: str = Field(min_length=1, description="a path to a topology YAML file")


def _topology_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        if "file" in value:
            return "file"
        if "generator" in value:
            gen = value["generator"]
            return gen if isinstance(gen, str) else repr(gen)
        return "inline" if "links" in value else None
    if isinstance(value, TopologyFile):
        return "file"
    if isinstance(value, TopologyDoc):
        return "inline"
    return getattr(value, "generator", None)


GeneratedTopology = StarTopology | LeafSpineTopology | TwoSiteTopology | RandomTopology
TopologySpec = Annotated[
    Annotated[StarTopology, Tag("star")]
    | Annotated[LeafSpineTopology, Tag("leaf-spine")]
    | Annotated[TwoSiteTopology, Tag("two-site")]
    | Annotated[RandomTopology, Tag("random")]
    | Annotated[TopologyFile, Tag("file")]
    | Annotated[TopologyDoc, Tag("inline")],
    Discriminator(_topology_kind),
]
TOPOLOGY_GENERATORS = ("star", "leaf-spine", "two-site", "random")

# ---------------------------------------------------------------------------- networks, containers


def _cidr(value: str | None) -> str | None:
    if value is not None:
        try:
            ipaddress.ip_network(value, strict=True)
        except ValueError:
            raise ValueError("a network address in CIDR form like 10.10.0.0/24") from None
    return value


def _address(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError("an IP address like 10.10.0.1") from None
    return value


class Network(StrictModel):
    """An overlay network; IPAM fields are checked for syntax here, for sense by the cluster."""

    name: Name = Field(description="a network name")
    subnet: str | None = Field(None, description="a subnet in CIDR form (default: allocated)")
    gateway: str | None = Field(None, description="an IP address (default: first in subnet)")
    ip_range: str | None = Field(None, description="a CIDR range inside the subnet to allocate")
    aux_addresses: dict[Name, str] | None = Field(
        None, description="a mapping of names to IP addresses kept out of allocation"
    )
    attachable: bool = Field(False, description="true if standalone containers may attach")
    encrypted: bool = Field(False, description="true to encrypt this network's data plane")
    mtu: int | None = Field(
        None, ge=576, le=9000, description="an overlay MTU (default: underlay MTU - 50)"
    )

    _check_subnet = field_validator("subnet", "ip_range")(_cidr)

    @field_validator("gateway")
    @classmethod
    def _check_gateway(cls, value: str | None) -> str | None:
        return None if value is None else _address(value)

    @field_validator("aux_addresses")
    @classmethod
    def _check_aux(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        bad = [k for k, v in (value or {}).items() if not _is_address(v)]
        if bad:
            raise ValueError(f"IP addresses like 10.10.0.5 (not for: {', '.join(bad)})")
        return value


def _is_address(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


class Container(StrictModel):
    """One container on one host, attached to the listed networks at start."""

    name: Name = Field(description="a container name, unique in the scenario")
    host: Name = Field(description="the name of a topology host")
    networks: tuple[Name, ...] = Field(min_length=1, description="a list of network names")


class ContainerGenerator(StrictModel):
    """``per_host`` containers on each listed host, named ``{prefix}-{host}-{i}``."""

    per_host: int = Field(ge=1, le=10_000, description="containers on each host")
    networks: tuple[Name, ...] = Field(min_length=1, description="a list of network names")
    hosts: tuple[Name, ...] | None = Field(
        None, min_length=1, description="a list of hosts (default: all)"
    )
    prefix: Name = Field("c", description="a name prefix")


def _container_kind(value: Any) -> str:
    if isinstance(value, ContainerGenerator):
        return "generator"
    return "generator" if isinstance(value, dict) and "per_host" in value else "container"


ContainerItem = Annotated[
    Annotated[Container, Tag("container")] | Annotated[ContainerGenerator, Tag("generator")],
    Discriminator(_container_kind),
]


class Service(StrictModel):
    """``replicas`` containers ``{name}.{i}`` on one network, placed round-robin on hosts."""

    name: Name = Field(description="a service name")
    replicas: int = Field(ge=0, le=1_000_000, description="the number of replicas")
    network: Name = Field(description="a network name")
    hosts: tuple[Name, ...] | None = Field(
        None, min_length=1, description="a list of hosts (default: all)"
    )


# ---------------------------------------------------------------------------- events


class _Event(StrictModel):
    at: float = Field(ge=0, description="a time in seconds from the start, below duration")


class LossEvent(_Event):
    """Random loss on one link, or on every link."""

    action: Literal["loss"]
    percent: float = Field(ge=0, le=100, description="a loss percentage")
    link: HostPair | None = Field(None, description="a topology link [a, b] (default: all)")
    duration: float | None = _OptPositive


class DelayEvent(_Event):
    """Extra one-way delay (and jitter) on one link, or on every link."""

    action: Literal["delay"]
    ms: float = Field(ge=0, description="extra delay in milliseconds")
    jitter_ms: float | None = Field(None, ge=0, description="jitter in milliseconds")
    link: HostPair | None = Field(None, description="a topology link [a, b] (default: all)")
    duration: float | None = _OptPositive


class RateEvent(_Event):
    """A rate limit on one link, or on every link."""

    action: Literal["rate"]
    mbps: float = Field(gt=0, description="a rate in Mbit/s")
    link: HostPair | None = Field(None, description="a topology link [a, b] (default: all)")
    duration: float | None = _OptPositive


class ClearEvent(_Event):
    """Remove loss, delay and rate impairments (or only ``kind``) from one link or all."""

    action: Literal["clear"]
    link: HostPair | None = Field(None, description="a topology link [a, b] (default: all)")
    kind: Literal["loss", "delay", "rate"] | None = Field(
        None, description="one impairment kind to remove: loss, delay or rate (default: all)"
    )


class PartitionEvent(_Event):
    """Split hosts into groups that cannot reach each other.

    Every host is in at most one group. Hosts not listed are an error unless ``rest`` is
    true, which puts them together in one more group.
    """

    action: Literal["partition"]
    groups: tuple[tuple[Name, ...], ...] = Field(
        min_length=1, description="a list of groups, each a list of host names"
    )
    rest: bool = Field(False, description="true to put unlisted hosts in one more group")


class HealEvent(_Event):
    """End every partition."""

    action: Literal["heal"]


class CrashEvent(_Event):
    """Stop a host's agent without a goodbye."""

    action: Literal["crash"]
    host: Name = Field(description="the name of a topology host")


class RestartEvent(_Event):
    """Start a crashed (or departed) host's agent again; it rejoins."""

    action: Literal["restart"]
    host: Name = Field(description="the name of a topology host")


class LeaveEvent(_Event):
    """A host leaves the cluster gracefully."""

    action: Literal["leave"]
    host: Name = Field(description="the name of a topology host")


class JoinEvent(_Event):
    """A departed (or crashed) host joins the cluster again."""

    action: Literal["join"]
    host: Name = Field(description="the name of a topology host")


class AttachEvent(_Event):
    """Attach a container (new, or existing on the same host) to a network."""

    action: Literal["attach"]
    container: Name = Field(description="a container name")
    host: Name = Field(description="the name of a topology host")
    network: Name = Field(description="a network name")


class DetachEvent(_Event):
    """Detach a container from one network, or remove it from all of them."""

    action: Literal["detach"]
    container: Name = Field(description="the name of an existing container")
    network: Name | None = Field(None, description="a network name (default: all, removing it)")


class ChurnEvent(_Event):
    """Containers attach and detach on a network as a Poisson process."""

    action: Literal["churn"]
    network: Name = Field(description="a network name")
    rate_per_s: float = Field(gt=0, description="events per second")
    duration: float = Field(gt=0, description="a number of seconds greater than 0")
    hosts: tuple[Name, ...] | None = Field(
        None, min_length=1, description="a list of hosts (default: all)"
    )


class RotateKeysEvent(_Event):
    """Rotate the encryption keyring."""

    action: Literal["rotate_keys"]


Event = Annotated[
    LossEvent
    | DelayEvent
    | RateEvent
    | ClearEvent
    | PartitionEvent
    | HealEvent
    | CrashEvent
    | RestartEvent
    | LeaveEvent
    | JoinEvent
    | AttachEvent
    | DetachEvent
    | ChurnEvent
    | RotateKeysEvent,
    Field(discriminator="action"),
]
EVENT_TYPES: tuple[type[_Event], ...] = (
    LossEvent,
    DelayEvent,
    RateEvent,
    ClearEvent,
    PartitionEvent,
    HealEvent,
    CrashEvent,
    RestartEvent,
    LeaveEvent,
    JoinEvent,
    AttachEvent,
    DetachEvent,
    ChurnEvent,
    RotateKeysEvent,
)


# ---------------------------------------------------------------------------- scenario


def _overrides_for(cls_name: str):
    def check(value: dict[str, Any]) -> dict[str, Any]:
        import dataclasses

        from overlaysim.core import config

        cls = getattr(config, cls_name)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for name, v in value.items():
            f = fields.get(name)
            if f is None:
                raise ValueError(
                    f"only {cls_name} fields ({', '.join(sorted(fields))}), not {name!r}"
                )
            want = {"bool": bool, "int": int, "float": (int, float)}[f.type]
            if not isinstance(v, want) or (f.type != "bool" and isinstance(v, bool)):
                raise ValueError(f"{name}: a {f.type}")
        return value

    return check


def _check_extensions(value: dict[str, bool]) -> dict[str, bool]:
    from overlaysim.core.config import EXTENSIONS

    bad = sorted(set(value) - set(EXTENSIONS))
    if bad:
        raise ValueError(f"only extensions ({', '.join(EXTENSIONS)}), not {bad[0]!r}")
    return value


class Protocol(StrictModel):
    """The protocol variant, extension switches, and per-field overrides of the profile's
    settings (see core/config.py and docs/variants.md)."""

    variant: Literal["overlaysim", "docker"] = Field(
        "overlaysim",
        description="'overlaysim' (ours, every extension on) or 'docker' (NetworkDB on "
        "memberlist as Docker ships it)",
    )
    extensions: dict[str, bool] = Field(
        default_factory=dict,
        description="switches over the variant: epochs, dead_notice, heal_rule, lifeguard, "
        "recovery_sync, reconcile, e.g. {heal_rule: false}",
    )

    membership: dict[str, bool | int | float] = Field(
        default_factory=dict,
        description="MembershipConfig fields, e.g. {lifeguard: false, suspicion_mult: 5}",
    )
    tables: dict[str, bool | int | float] = Field(
        default_factory=dict, description="TableConfig fields, e.g. {bulk_sync_interval: 10}"
    )

    _check_membership = field_validator("membership")(_overrides_for("MembershipConfig"))
    _check_tables = field_validator("tables")(_overrides_for("TableConfig"))
    _check_ext = field_validator("extensions")(_check_extensions)


class Measure(StrictModel):
    """What to measure besides the always-on protocol metrics."""

    throughput: tuple[HostPair, ...] = Field(
        (), description="a list of [source, destination] container pairs"
    )
    probes: bool = Field(True, description="true to probe reachability between containers")
    probe_interval: float = Field(1.0, gt=0, description="seconds between probe rounds")


class Scenario(StrictModel):
    """A whole experiment. Load it with ``overlaysim.scenario.loader.load_scenario``.

    After loading, ``managers`` is always set and ``resolved_topology`` holds the built
    underlay topology.
    """

    name: Name = Field(description="a scenario name")
    seed: int = Field(0, description="an integer seed for every random choice")
    duration: float = Field(gt=0, description="the run length in seconds")
    profile: Literal["lan", "wan", "local"] = Field("lan", description="a timing preset")
    topology: TopologySpec = Field(description="a topology generator, file or inline topology")
    managers: tuple[Name, ...] | None = Field(
        None, min_length=1, description="a list of host names (default: the first host)"
    )
    networks: tuple[Network, ...] = Field((), description="a list of networks")
    containers: tuple[ContainerItem, ...] = Field((), description="containers and generators")

    @field_validator("containers", mode="before")
    @classmethod
    def _one_item(cls, value: Any) -> Any:
        """A bare container or generator mapping means the one-item list it stands for."""
        return [value] if isinstance(value, dict) else value

    services: tuple[Service, ...] = Field((), description="a list of services")
    events: tuple[Event, ...] = Field((), description="a list of timed events")
    measure: Measure = Field(default_factory=Measure, description="what to measure")
    protocol: Protocol = Field(
        default_factory=Protocol,
        description="overrides of the profile's settings, e.g. {membership: {lifeguard: false}}",
    )
    gossip_encryption: bool | None = Field(
        None,
        description="true to seal the control plane (gossip, manager channel) with a key "
        "made for the run; default: on when any network is encrypted, whose keys travel "
        "over that sealed channel (the simulator does not model it)",
    )
    boot: Literal["formed", "join"] = Field(
        "formed",
        description="'formed': time 0 is when the cluster has formed (the simulator starts "
        "from converged membership, the emulator waits until every agent sees every other); "
        "'join': every host joins through the managers at time 0 and the joins are measured",
    )

    _topology: Topology | None = PrivateAttr(None)

    @property
    def resolved_topology(self) -> Topology:
        """The built underlay topology (set by the loader)."""
        if self._topology is None:
            raise RuntimeError("scenario not resolved: load it with load_scenario()")
        return self._topology

    def resolved(self) -> dict[str, Any]:
        """The scenario as plain JSON-ready data, defaults filled and the topology inline.

        Validating this dict again gives an equivalent scenario (same topology, same
        containers, same events), so it is what a results manifest records.
        """
        data = self.model_dump(mode="json")
        data["topology"] = self.resolved_topology.to_dict()
        return data
