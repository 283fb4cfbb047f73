"""The planned timeline's steps: one frozen, keyword-only class per action.

The planner (:mod:`overlaysim.scenario.timeline`) turns scenario events into these;
the world (:mod:`overlaysim.world`) applies each with one ``match``. A step carries
exactly the fields of its scenario event (nothing invented): a timed impairment's end
is a :class:`Clear` with ``kind`` set, which a scenario can write too.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

Link = tuple[str, str]
ImpairKind = Literal["loss", "delay", "rate"]
#: Impairment kinds, in the order a full ``clear`` removes them.
IMPAIR_KINDS: tuple[ImpairKind, ...] = ("loss", "delay", "rate")


@dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    """One thing to do at time ``at``; ``origin`` is the index in ``events`` it comes from."""

    ACTION: ClassVar[str] = ""
    at: float
    origin: int = -1

    @property
    def action(self) -> str:
        """The scenario action name of this step."""
        return self.ACTION

    def fields(self) -> dict[str, Any]:
        """The step's own fields (no ``at``/``origin``), ``None`` left out, JSON-shaped."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name in ("at", "origin"):
                continue
            value = getattr(self, f.name)
            if value is not None:
                out[f.name] = _jsonable(value)
        return out

    def describe(self) -> dict[str, Any]:
        """``{"at", "action", **fields}``: the step as the events table records it."""
        return {"at": self.at, "action": self.action, **self.fields()}


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class Loss(Step):
    """Drop ``percent`` % of packets on ``link`` (None: end to end everywhere)."""

    ACTION: ClassVar[str] = "loss"
    percent: float
    link: Link | None = None
    duration: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Delay(Step):
    """Add ``ms`` (and ``jitter_ms``) one-way delay on ``link`` (None: everywhere)."""

    ACTION: ClassVar[str] = "delay"
    ms: float
    jitter_ms: float | None = None
    link: Link | None = None
    duration: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Rate(Step):
    """Limit ``link`` (None: every link) to ``mbps``."""

    ACTION: ClassVar[str] = "rate"
    mbps: float
    link: Link | None = None
    duration: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Clear(Step):
    """Remove impairments of ``kind`` (None: every kind) from ``link`` (None: everywhere)."""

    ACTION: ClassVar[str] = "clear"
    link: Link | None = None
    kind: ImpairKind | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Partition(Step):
    """Split hosts into ``groups``; ``rest`` puts unlisted hosts in one more group."""

    ACTION: ClassVar[str] = "partition"
    groups: tuple[tuple[str, ...], ...]
    rest: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Heal(Step):
    """End every partition."""

    ACTION: ClassVar[str] = "heal"


@dataclass(frozen=True, slots=True, kw_only=True)
class Crash(Step):
    """Stop ``host``'s agent without a goodbye."""

    ACTION: ClassVar[str] = "crash"
    host: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Restart(Step):
    """Start a crashed (or departed) ``host`` again."""

    ACTION: ClassVar[str] = "restart"
    host: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Leave(Step):
    """``host`` leaves the cluster gracefully."""

    ACTION: ClassVar[str] = "leave"
    host: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Join(Step):
    """``host`` joins (first time, or after a leave)."""

    ACTION: ClassVar[str] = "join"
    host: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Attach(Step):
    """Attach ``container`` (new, or living on ``host``) to ``network``."""

    ACTION: ClassVar[str] = "attach"
    container: str
    host: str
    network: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Detach(Step):
    """Detach ``container`` from ``network`` (None: from all, removing it)."""

    ACTION: ClassVar[str] = "detach"
    container: str
    network: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RotateKeys(Step):
    """Rotate the encryption keyring."""

    ACTION: ClassVar[str] = "rotate_keys"


EndpointModeName = Literal["vip", "dnsrr"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceCreate(Step):
    """Create service ``name`` on ``network`` with ``replicas`` tasks (``<name>.<slot>``)."""

    ACTION: ClassVar[str] = "service_create"
    name: str
    network: str
    replicas: int
    endpoint_mode: EndpointModeName = "vip"
    #: Published ports ``"P:T"`` (None: none; left out of the events row then).
    publish: tuple[str, ...] | None = None
    #: The command every task runs (None: none).
    command: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceScale(Step):
    """Set ``service`` to ``replicas`` tasks (new ones placed, the highest slots removed)."""

    ACTION: ClassVar[str] = "service_scale"
    service: str
    replicas: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceUpdate(Step):
    """Switch ``service`` to ``endpoint_mode`` (its tasks are replaced, generation + 1)."""

    ACTION: ClassVar[str] = "service_update"
    service: str
    endpoint_mode: EndpointModeName


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceRm(Step):
    """Remove ``service``: its tasks, and its VIP."""

    ACTION: ClassVar[str] = "service_rm"
    service: str


#: Steps that change a service.
SERVICE_STEPS = (ServiceCreate, ServiceScale, ServiceUpdate, ServiceRm)

#: Lifecycle steps that take a host down / bring it up.
DOWN_STEPS = (Crash, Leave)
UP_STEPS = (Restart, Join)

STEP_TYPES: dict[str, type[Step]] = {
    cls.ACTION: cls
    for cls in (
        Loss,
        Delay,
        Rate,
        Clear,
        Partition,
        Heal,
        Crash,
        Restart,
        Leave,
        Join,
        Attach,
        Detach,
        RotateKeys,
        ServiceCreate,
        ServiceScale,
        ServiceUpdate,
        ServiceRm,
    )
}


def step_from_event(event: Any, origin: int) -> Step:
    """The step for one (non-churn) scenario event model."""
    cls = STEP_TYPES[event.action]
    names = {f.name for f in dataclasses.fields(cls)} - {"at", "origin"}
    values = {n: getattr(event, n) for n in names if hasattr(event, n)}
    for n in ("publish", "command"):  # frozen steps hold tuples
        if isinstance(values.get(n), list):
            values[n] = tuple(values[n])
    return cls(at=float(event.at), origin=origin, **values)
