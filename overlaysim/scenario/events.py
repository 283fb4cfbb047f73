"""The schema of a scenario's timed events: one model per ``action``, and ``Event``, the
union the ``events`` list holds.

``timeline`` turns them into typed steps (``steps``); ``checks`` checks them against the
rest of the scenario (hosts exist, containers exist when detached, ...).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from overlaysim.scenario.fields import HostPair, Name, StrictModel

_OptPositive = Field(None, gt=0, description="a number of seconds greater than 0")
_HOST = "the name of a topology host"


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
    host: Name = Field(description=_HOST)


class RestartEvent(_Event):
    """Start a crashed (or departed) host's agent again; it rejoins."""

    action: Literal["restart"]
    host: Name = Field(description=_HOST)


class LeaveEvent(_Event):
    """A host leaves the cluster gracefully."""

    action: Literal["leave"]
    host: Name = Field(description=_HOST)


class JoinEvent(_Event):
    """A departed (or crashed) host joins the cluster again."""

    action: Literal["join"]
    host: Name = Field(description=_HOST)


class AttachEvent(_Event):
    """Attach a container (new, or existing on the same host) to a network."""

    action: Literal["attach"]
    container: Name = Field(description="a container name")
    host: Name = Field(description=_HOST)
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


_SERVICE_NAME = "a service name"
_ENDPOINT_MODE = "an endpoint mode: vip (one virtual IP) or dnsrr (every task address)"


class ServiceCreateEvent(_Event):
    """Create a service: ``replicas`` tasks ``{name}.{slot}`` on one network, resolved by
    name to one virtual IP (``vip``) or to every task address (``dnsrr``)."""

    action: Literal["service_create"]
    name: Name = Field(description=_SERVICE_NAME)
    network: Name = Field(description="a network name")
    replicas: int = Field(ge=0, le=100_000, description="a number of tasks, 0 or more")
    endpoint_mode: Literal["vip", "dnsrr"] = Field("vip", description=_ENDPOINT_MODE)
    publish: list[str] | None = Field(
        None,
        description="a list of published ports PUBLISHED:TARGET (the routing mesh, emulation)",
    )
    command: list[Annotated[str, Field(min_length=1)]] | None = Field(
        None,
        min_length=1,
        description="a command every task runs, as a list of words (emulation)",
    )


class ServiceScaleEvent(_Event):
    """Set a service's number of tasks."""

    action: Literal["service_scale"]
    service: Name = Field(description=_SERVICE_NAME)
    replicas: int = Field(ge=0, le=100_000, description="a number of tasks, 0 or more")


class ServiceUpdateEvent(_Event):
    """Switch a service's endpoint mode (its tasks are replaced)."""

    action: Literal["service_update"]
    service: Name = Field(description=_SERVICE_NAME)
    endpoint_mode: Literal["vip", "dnsrr"] = Field(description=_ENDPOINT_MODE)


class ServiceRmEvent(_Event):
    """Remove a service: its tasks and its virtual IP."""

    action: Literal["service_rm"]
    service: Name = Field(description=_SERVICE_NAME)


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
    | RotateKeysEvent
    | ServiceCreateEvent
    | ServiceScaleEvent
    | ServiceUpdateEvent
    | ServiceRmEvent,
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
    ServiceCreateEvent,
    ServiceScaleEvent,
    ServiceUpdateEvent,
    ServiceRmEvent,
)
