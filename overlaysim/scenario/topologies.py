"""The schema of topologies: link properties, the four generators, topology files and
inline topologies, and the discriminated ``TopologySpec`` a scenario's ``topology`` is.

``generators`` turns these models into a built ``Topology``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, field_validator

from overlaysim.scenario.fields import Name, StrictModel
from overlaysim.scenario.topology import LinkSpec


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
