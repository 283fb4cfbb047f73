"""Service discovery state: names, aliases and service records, and the resolver over them.

Sans-I/O and deterministic. The records ride in the endpoint table that already carries
one entry per container and network (key = container name, value
:meth:`~overlaysim.core.endpoint.Endpoint.to_value`: ``name``, ``ip``, ``mac``, ``vtep``): a container's aliases and, for a service task, its service, slot,
the service's VIP, endpoint mode and spec generation are extra fields of that same
value. So a name exists exactly as long as its endpoint entry is live on a host: it is
created, gossiped, bulk-synced, tombstoned and hidden (owner declared dead, left, or
restarted) by the rules of :mod:`overlaysim.core.tables`, and DNS state converges the
way endpoints do. The data-plane code reads only ``ip``/``mac``/``vtep`` and ignores the
rest. A service is the set of its tasks' entries; it exists while one of them is live,
which is how a task leaves as soon as its entry is deleted or its host is declared dead.

Value fields (all strings, as table values are ``dict[str, str]``):

==========  ===================================================================
field       meaning
==========  ===================================================================
aliases     extra names on this network, comma separated (may be absent)
service     the service this container is a task of (absent: not a task)
slot        the task's slot, a positive integer (tasks only)
mode        ``vip`` or ``dnsrr`` (tasks only)
vip         the service's virtual IP on this network (``vip`` mode only)
svc_gen     the service spec generation the task was created or updated with
==========  ===================================================================

While a service is being updated its tasks can disagree about ``mode``/``vip``; the
highest ``svc_gen`` wins (then the smallest key), so every host picks the same one.

:class:`Directory` is fed with the table's :class:`~overlaysim.core.events.EntryEvent`
stream (or loaded from a table snapshot) and answers as an embedded DNS server must,
for one asking container:

* ``tasks.<service>``: every live task IP of the service;
* ``<service>``: its VIP, or in ``dnsrr`` mode every task IP (shuffled when asked);
* a container name or alias: the IPs of the containers holding it;
* an address (reverse lookup): the containers holding it, or the service whose VIP it is;

looked up only on the networks the asker is attached to (sorted by name; the first
network holding the name answers). A name known only on other networks is NXDOMAIN,
so nothing leaks across networks; so is an unknown single-label name, with or without
``tasks.`` (a stub resolver appends its search domains itself). Anything else is for the host's resolvers.
"""

from __future__ import annotations

import ipaddress
import random
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum

from overlaysim.core.endpoint import ENDPOINTS
from overlaysim.core.events import EntryEvent, EntryEventKind

__all__ = [
    "PUBLISH_EXPECTED",
    "RESERVED_PORTS",
    "parse_port_pair",
    "ENDPOINTS_TABLE",
    "Answer",
    "AnswerKind",
    "Directory",
    "EndpointMode",
    "NameRecord",
    "Service",
    "TaskSpec",
    "check_dns_name",
    "name_fields",
    "task_name",
    "vip_endpoint",
]

#: The table whose entries carry names: the endpoint table (:mod:`overlaysim.core.endpoint`).
ENDPOINTS_TABLE = ENDPOINTS

#: The prefix Docker uses for "every task of this service".
TASKS_PREFIX = "tasks."

_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")
_MAX_NAME = 253
_MAX_GEN = 2**63 - 1


class EndpointMode(Enum):
    """How a service name resolves: one virtual IP, or every task IP (DNS round robin)."""

    VIP = "vip"
    DNSRR = "dnsrr"


def check_dns_name(name: str, what: str = "name") -> str:
    """``name`` lowercased if it is a valid DNS name (labels of letters, digits, ``-``, ``_``).

    Raises ValueError with one line naming ``what``, the value and what was expected.
    """
    if type(name) is not str:
        raise ValueError(f"{what} {name!r}: expected a string")
    n = name.lower().rstrip(".")
    if not n or len(n) > _MAX_NAME or not all(_LABEL.match(p) for p in n.split(".")):
        raise ValueError(
            f"{what} {name!r}: expected a DNS name (dot-separated labels of 1-63 letters, "
            f"digits, '-' or '_', not starting or ending with '-')"
        )
    return n


def task_name(service: str, slot: int) -> str:
    """The container name and hostname of a service task: ``<service>.<slot>``."""
    return f"{check_dns_name(service, 'service')}.{slot}"


def vip_endpoint(service: str) -> str:
    """The IPAM endpoint name holding ``service``'s VIP on a network.

    ``vip:`` cannot start a container name (a DNS name has no ``:``), so a VIP never
    collides with a container's address.
    """
    return f"vip:{check_dns_name(service, 'service')}"


#: Ports the agents use on a host's underlay address, which no service may publish:
#: the manager API, gossip, VXLAN and ESP-in-UDP.
RESERVED_PORTS = {2377: "the manager API", 7946: "gossip", 4789: "VXLAN", 4500: "ESP-in-UDP"}
#: What a published port pair must look like (the ``expected`` of an error line).
PUBLISH_EXPECTED = "PUBLISHED:TARGET, two ports 1-65535 (e.g. 8080:80)"


def parse_port_pair(item: object) -> tuple[int, int]:
    """``"P:T"`` (or ``[P, T]``): the published port and the task's target port.

    ValueError when it is not two ports 1-65535; the caller's line says
    :data:`PUBLISH_EXPECTED`. One rule for the CLI, the manager and scenarios.
    """
    pair = item.split(":") if isinstance(item, str) else item
    try:
        p, t = (int(x) for x in pair)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ValueError(f"{item!r}: expected {PUBLISH_EXPECTED}") from None
    if isinstance(pair, list | tuple) and any(isinstance(x, bool | float) for x in pair):
        raise ValueError(f"{item!r}: expected {PUBLISH_EXPECTED}")
    if not (0 < p < 65536 and 0 < t < 65536):
        raise ValueError(f"{item!r}: expected {PUBLISH_EXPECTED}")
    return p, t


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """What makes a container a task of a service, as its endpoint entry says it."""

    service: str
    slot: int
    mode: EndpointMode = EndpointMode.VIP
    vip: str | None = None
    gen: int = 1

    def __post_init__(self) -> None:
        check_dns_name(self.service, "service")
        if self.service.startswith(TASKS_PREFIX):
            raise ValueError(f"service {self.service!r}: expected a name not starting 'tasks.'")
        if type(self.slot) is not int or self.slot < 1:
            raise ValueError(f"slot {self.slot!r}: expected an integer >= 1")
        if type(self.gen) is not int or not 0 <= self.gen <= _MAX_GEN:
            raise ValueError(f"svc_gen {self.gen!r}: expected a non-negative integer")
        if not isinstance(self.mode, EndpointMode):
            raise ValueError(f"mode {self.mode!r}: expected vip or dnsrr")
        if self.mode is EndpointMode.VIP:
            if self.vip is None:
                raise ValueError("vip None: expected an IPv4 address in vip mode")
            _ipv4(self.vip, "vip")
        elif self.vip is not None:
            raise ValueError(f"vip {self.vip!r}: expected none in dnsrr mode")


def name_fields(aliases: Iterable[str] = (), task: TaskSpec | None = None) -> dict[str, str]:
    """The extra endpoint-value fields for ``aliases`` and ``task`` (merge into the value)."""
    out: dict[str, str] = {}
    al = [check_dns_name(a, "alias") for a in aliases]
    if al:
        out["aliases"] = ",".join(dict.fromkeys(al))
    if task is not None:
        out["service"] = task.service.lower()
        out["slot"] = str(task.slot)
        out["mode"] = task.mode.value
        out["svc_gen"] = str(task.gen)
        if task.vip is not None:
            out["vip"] = task.vip
    return out


@dataclass(frozen=True, slots=True)
class NameRecord:
    """The names one endpoint entry holds on one network."""

    key: str  # the container name (the entry key)
    ip: str
    aliases: tuple[str, ...] = ()
    task: TaskSpec | None = None

    @classmethod
    def from_value(cls, key: str, value: Mapping[str, str]) -> NameRecord:
        """Parse an endpoint entry; ValueError (one line) if a peer sent junk."""
        name = check_dns_name(key, "container name")
        ip = _ipv4(value.get("ip"), "ip")
        raw = value.get("aliases", "")
        if type(raw) is not str:
            raise ValueError(f"aliases {raw!r}: expected a comma-separated string")
        aliases = tuple(dict.fromkeys(check_dns_name(a, "alias") for a in raw.split(",") if a))
        task = None
        if "service" in value:
            try:
                slot, gen = int(value.get("slot", "")), int(value.get("svc_gen", "0"))
                mode = EndpointMode(value.get("mode", ""))
            except ValueError as exc:
                raise ValueError(f"task fields of {key!r}: {exc}") from None
            task = TaskSpec(value["service"].lower(), slot, mode, value.get("vip"), gen)
        return cls(name, ip, aliases, task)

    def names(self) -> tuple[str, ...]:
        """Every name that resolves to this endpoint's IP."""
        return (self.key, *self.aliases)


def _ipv4(v: object, what: str) -> str:
    try:
        return str(ipaddress.IPv4Address(v))  # type: ignore[arg-type]
    except (ValueError, TypeError):
        raise ValueError(f"{what} {v!r}: expected an IPv4 address") from None


class AnswerKind(Enum):
    ANSWER = "answer"  # the name is ours: ``ips`` (possibly empty for another type)
    NXDOMAIN = "nxdomain"  # no such name for this asker
    FORWARD = "forward"  # not a cluster name: ask the host's resolvers


@dataclass(frozen=True, slots=True)
class Answer:
    """What the resolver says about one name for one asker."""

    kind: AnswerKind
    ips: tuple[str, ...] = ()
    network: str | None = None  # the network that answered


@dataclass(frozen=True, slots=True)
class Service:
    """A service as one network's live task entries describe it."""

    name: str
    mode: EndpointMode
    vip: str | None
    tasks: tuple[tuple[str, str], ...]  # (container name, ip), sorted by name

    @property
    def task_ips(self) -> tuple[str, ...]:
        return tuple(sorted({ip for _, ip in self.tasks}, key=ipaddress.IPv4Address))


@dataclass(slots=True)
class _Net:
    records: dict[str, NameRecord]
    by_name: dict[str, set[str]]  # name or alias -> keys
    by_service: dict[str, set[str]]  # service -> keys of its tasks


def _sorted_ips(ips: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(set(ips), key=ipaddress.IPv4Address))


class Directory:
    """One host's view of names per network, kept in step with the endpoint table."""

    def __init__(self) -> None:
        self._nets: dict[str, _Net] = {}
        self._where: dict[str, dict[str, None]] = {}  # key -> networks it has a record on
        #: Endpoint entries ignored because their name fields were malformed.
        self.dropped = 0

    # -- feeding -----------------------------------------------------------------------

    def apply(self, ev: EntryEvent) -> bool:
        """Apply one table event; True if the names changed."""
        if ev.table != ENDPOINTS_TABLE or ev.kind is EntryEventKind.REFRESH:
            return False  # a refresh is the same value: the names did not change
        if ev.kind in (EntryEventKind.DELETE, EntryEventKind.TOMBSTONE):
            return self._remove(ev.network, ev.key)
        try:
            rec = NameRecord.from_value(ev.key, ev.value)
        except ValueError:
            self.dropped += 1
            return self._remove(ev.network, ev.key)  # junk replaces what it updated
        return self._put(ev.network, rec)

    def load(self, network: str, values: Mapping[str, Mapping[str, str]]) -> None:
        """Replace what is known of ``network`` with live entries ``key -> value``."""
        self.forget_network(network)
        for key, value in values.items():
            try:
                self._put(network, NameRecord.from_value(key, value))
            except ValueError:
                self.dropped += 1

    def forget_network(self, network: str) -> None:
        """Drop every record of ``network`` (this host left it)."""
        for key in list(self._nets.get(network, _Net({}, {}, {})).records):
            self._remove(network, key)

    def _put(self, network: str, rec: NameRecord) -> bool:
        net = self._nets.get(network)
        old = net.records.get(rec.key) if net is not None else None
        if old == rec:
            return False
        if old is not None:
            self._remove(network, rec.key)
        net = self._nets.setdefault(network, _Net({}, {}, {}))
        net.records[rec.key] = rec
        for n in rec.names():
            net.by_name.setdefault(n, set()).add(rec.key)
        if rec.task is not None:
            net.by_service.setdefault(rec.task.service, set()).add(rec.key)
        self._where.setdefault(rec.key, {})[network] = None
        return True

    def _remove(self, network: str, key: str) -> bool:
        net = self._nets.get(network)
        key = key.lower() if type(key) is str else key
        rec = net.records.pop(key, None) if net is not None else None
        if rec is None:
            return False
        for n in rec.names():
            _discard(net.by_name, n, key)
        if rec.task is not None:
            _discard(net.by_service, rec.task.service, key)
        _discard(self._where, key, network)
        if not net.records:
            del self._nets[network]
        return True

    # -- queries -----------------------------------------------------------------------

    def networks_of(self, container: str) -> tuple[str, ...]:
        """Networks ``container`` has a live endpoint on, sorted."""
        return tuple(sorted(self._where.get(container.lower(), ())))

    def record(self, network: str, key: str) -> NameRecord | None:
        net = self._nets.get(network)
        return net.records.get(key.lower()) if net is not None else None

    def service(self, network: str, name: str) -> Service | None:
        """Service ``name`` on ``network`` as its live tasks describe it, or None."""
        net = self._nets.get(network)
        keys = net.by_service.get(name.lower()) if net is not None else None
        if not keys:
            return None
        recs = [net.records[k] for k in sorted(keys)]
        # Highest generation wins, then the smallest key: the same choice on every host.
        lead = max(recs, key=lambda r: r.task.gen)  # type: ignore[union-attr]
        t = lead.task
        assert t is not None
        return Service(name.lower(), t.mode, t.vip, tuple((r.key, r.ip) for r in recs))

    def services(self, network: str) -> tuple[Service, ...]:
        net = self._nets.get(network)
        if net is None:
            return ()
        return tuple(s for n in sorted(net.by_service) if (s := self.service(network, n)))

    def known_anywhere(self, name: str) -> bool:
        """Whether ``name`` is a container, alias, service or ``tasks.`` name on any network."""
        return any(self._lookup(net_name, name) is not None for net_name in self._nets)

    def resolve(self, asker: str, qname: str, rng: random.Random | None = None) -> Answer:
        """Resolve ``qname`` (A records) for container ``asker``; see the module docstring.

        With ``rng``, the task IPs of a ``dnsrr`` service are shuffled; otherwise every
        list is sorted by address.
        """
        try:
            name = check_dns_name(qname)
        except ValueError:
            return Answer(AnswerKind.NXDOMAIN)
        for network in self.networks_of(asker):
            hit = self._lookup(network, name)
            if hit is not None:
                ips, shuffle = hit
                if shuffle and rng is not None:
                    ips = list(ips)
                    rng.shuffle(ips)
                return Answer(AnswerKind.ANSWER, tuple(ips), network)
        if self.known_anywhere(name) or "." not in _strip_tasks(name):
            return Answer(AnswerKind.NXDOMAIN)
        return Answer(AnswerKind.FORWARD)

    def resolve_ptr(self, asker: str, ip: str) -> Answer:
        """Names of ``ip`` for ``asker`` (reverse lookup): containers, or a service's VIP.

        The answer's ``ips`` field holds the names here. An address known only on
        networks the asker is not on is NXDOMAIN; an unknown one is forwarded.
        """
        try:
            addr = str(ipaddress.IPv4Address(ip))
        except ValueError:
            return Answer(AnswerKind.FORWARD)
        for network in self.networks_of(asker):
            names = self._names_of(network, addr)
            if names:
                return Answer(AnswerKind.ANSWER, names, network)
        if any(self._names_of(n, addr) for n in self._nets):
            return Answer(AnswerKind.NXDOMAIN)
        return Answer(AnswerKind.FORWARD)

    def _names_of(self, network: str, addr: str) -> tuple[str, ...]:
        net = self._nets.get(network)
        if net is None:
            return ()
        names = {r.key for r in net.records.values() if r.ip == addr}
        names |= {r.task.service for r in net.records.values() if r.task and r.task.vip == addr}
        return tuple(sorted(names))

    def vip_backends(self, asker: str) -> dict[str, tuple[str, ...]]:
        """VIP -> live task IPs of every ``vip``-mode service on the asker's networks."""
        out: dict[str, tuple[str, ...]] = {}
        for network in self.networks_of(asker):
            for svc in self.services(network):
                if svc.mode is EndpointMode.VIP and svc.vip is not None:
                    out[svc.vip] = svc.task_ips
        return dict(sorted(out.items()))

    def _lookup(self, network: str, name: str) -> tuple[tuple[str, ...], bool] | None:
        """(ips, shuffle) for ``name`` on ``network``, or None if it is not there."""
        net = self._nets.get(network)
        if net is None:
            return None
        if name.startswith(TASKS_PREFIX):
            svc = self.service(network, name[len(TASKS_PREFIX) :])
            if svc is not None:
                return svc.task_ips, False
        svc = self.service(network, name)
        if svc is not None:
            if svc.mode is EndpointMode.VIP and svc.vip is not None:
                return (svc.vip,), False
            return svc.task_ips, True
        keys = net.by_name.get(name)
        if keys:
            return _sorted_ips(net.records[k].ip for k in keys), False
        return None


def _strip_tasks(name: str) -> str:
    return name[len(TASKS_PREFIX) :] if name.startswith(TASKS_PREFIX) else name


def _discard(index: dict, k: object, v: object) -> None:
    s = index.get(k)
    if s is None:
        return
    if isinstance(s, dict):
        s.pop(v, None)
    else:
        s.discard(v)
    if not s:
        del index[k]
