"""The scenario document's schema (pydantic models): networks, containers and services,
protocol overrides, what to measure, and ``Scenario`` itself.

The models check each field alone: types, ranges, names, unknown fields. Topologies are
in ``topologies``, events in ``events``, the shared base in ``fields``; what needs several
fields (named hosts exist, the timeline makes sense) is in ``checks``; reading files and
``--set`` overrides is in ``loader``; problems and ``ScenarioError`` in ``problems``.
``docs/scenarios.md`` is the reference for every field.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, PrivateAttr, Tag, field_validator

from overlaysim.core.esp import MAX_SEQ
from overlaysim.core.network import DEFAULT_ATTACHMENT, Attachment
from overlaysim.scenario.events import Event
from overlaysim.scenario.fields import HostPair, Name, StrictModel
from overlaysim.scenario.topologies import TopologySpec
from overlaysim.scenario.topology import Topology


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
    attachment: Attachment = Field(
        DEFAULT_ATTACHMENT,
        description="how emulated hosts plug containers in: veth (a veth pair into the "
        "network's bridge, as Docker does) or macvlan (a macvlan of the VXLAN device: one "
        "hop fewer per frame; plain networks only). The simulator records it; it does not "
        "change the protocol",
    )
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
            kind = {"bool": "true or false", "int": "an integer", "float": "a number"}[f.type]
            if not isinstance(v, want) or (f.type != "bool" and isinstance(v, bool)):
                raise ValueError(f"{name}: {kind}")
            if f.type != "bool":
                if name in config.POSITIVE_FIELDS and not v > 0:
                    raise ValueError(f"{name}: {kind} above 0, not {v!r}")
                if not v >= 0:
                    raise ValueError(f"{name}: {kind} of 0 or more, not {v!r}")
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
        "recovery_sync, join_resync, reconcile, e.g. {heal_rule: false}",
    )

    membership: dict[str, bool | int | float] = Field(
        default_factory=dict,
        description="MembershipConfig fields, e.g. {lifeguard: false, suspicion_mult: 5}",
    )
    tables: dict[str, bool | int | float] = Field(
        default_factory=dict, description="TableConfig fields, e.g. {bulk_sync_interval: 10}"
    )
    esp_seq_limit: int | None = Field(
        None,
        ge=1,
        le=MAX_SEQ,
        description="the highest ESP sequence number one SA of an encrypted network seals "
        f"before it needs a new key, in emulation (default {MAX_SEQ}: the 32-bit space "
        "minus the rekey margin); lowered, sequence exhaustion happens in seconds",
    )

    _check_membership = field_validator("membership")(_overrides_for("MembershipConfig"))
    _check_tables = field_validator("tables")(_overrides_for("TableConfig"))
    _check_ext = field_validator("extensions")(_check_extensions)


class LbProbe(StrictModel):
    """A load-balancing probe (emulation only): after the timeline, ``client`` opens
    ``connections`` new TCP connections to ``service``'s VIP on ``port``; each task
    answers with its hostname. The counts per task become ``lb_spread``."""

    service: Name = Field(description="a service made by service_create, in vip mode at the end")
    client: Name = Field(description="the container that connects (on the service's network)")
    connections: int = Field(30, ge=1, le=10000, description="new TCP connections to open")
    port: int = Field(8080, ge=1, le=65535, description="the TCP port the tasks answer on")


class Measure(StrictModel):
    """What to measure besides the always-on protocol metrics."""

    throughput: tuple[HostPair, ...] = Field(
        (), description="a list of [source, destination] container pairs"
    )
    probes: bool = Field(True, description="true to probe reachability between containers")
    probe_interval: float = Field(1.0, gt=0, description="seconds between probe rounds")
    lb_probe: LbProbe | None = Field(
        None,
        description="a load-balancing probe through a service VIP at the end of an "
        "emulation, e.g. {service: web, client: client1, connections: 30}",
    )


#: The default of ``service_timing.task_interval``: seconds between one service step's
#: task changes (the emulator's agents took 0.3-1.6 s per task request on services.yaml).
TASK_INTERVAL_S = 0.5
#: The default of ``service_timing.detach_delay``: seconds from a host's last task's
#: removal to the host leaving the network (measured 0.18-1.7 s in emulation).
DETACH_DELAY_S = 0.25


class ServiceTiming(StrictModel):
    """How a service step unfolds in time, the same for every backend: a step's task
    changes come ``task_interval`` apart (the first at the step's time), and a host whose
    last task on a network goes leaves that network ``detach_delay`` later (a replaced
    task's successor starts then too)."""

    task_interval: float = Field(
        TASK_INTERVAL_S,
        ge=0,
        le=60,
        description=f"seconds between a service step's task changes (default {TASK_INTERVAL_S})",
    )
    detach_delay: float = Field(
        DETACH_DELAY_S,
        ge=0,
        le=60,
        description="seconds from a task's removal to its host leaving the network when it "
        f"was the host's last container there (default {DETACH_DELAY_S})",
    )


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
    underlay_mtu: int | None = Field(
        None,
        ge=576,
        le=9000,
        description="the MTU of every underlay interface in emulation (default 1500; "
        "the simulator does not model packet sizes against it)",
    )

    @field_validator("containers", mode="before")
    @classmethod
    def _one_item(cls, value: Any) -> Any:
        """A bare container or generator mapping means the one-item list it stands for."""
        return [value] if isinstance(value, dict) else value

    services: tuple[Service, ...] = Field((), description="a list of services")
    events: tuple[Event, ...] = Field((), description="a list of timed events")
    service_timing: ServiceTiming | None = Field(
        None,
        description="how service steps unfold in time, e.g. {task_interval: 0.5, "
        "detach_delay: 0.25} (default: those values when any event is a service step)",
    )
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

    def with_topology(self, topology: Topology) -> Scenario:
        """This scenario with its built topology set (the loader's last step)."""
        self._topology = topology
        return self

    def resolved(self) -> dict[str, Any]:
        """The scenario as plain JSON-ready data, defaults filled and the topology inline.

        Validating this dict again gives an equivalent scenario (same topology, same
        containers, same events), so it is what a results manifest records.
        """
        data = self.model_dump(mode="json")
        data["topology"] = self.resolved_topology.to_dict()
        if self.has_service_steps:
            data["service_timing"] = self.timing.model_dump(mode="json")
        else:  # nothing to time: the manifest stays as it was before the field existed
            data.pop("service_timing", None)
        return data

    @property
    def has_service_steps(self) -> bool:
        """Whether any event creates or changes a service."""
        return any(ev.action.startswith("service_") for ev in self.events)

    @property
    def timing(self) -> ServiceTiming:
        """The service timing in force (the defaults when the scenario sets none)."""
        return self.service_timing or ServiceTiming()
