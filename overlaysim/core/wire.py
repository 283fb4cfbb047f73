"""Versioned wire format for the control plane (UDP and TCP on 7946).

Every packet is a msgpack array ``[VERSION, type, field1, field2, ...]``. Fields are
encoded positionally in dataclass order; nested records (updates, entries) are arrays
too. Decoding is strict: wrong version, unknown type, wrong field count or type,
oversized input, or trailing bytes all raise :class:`WireError`, the one exception a
driver has to catch, count and drop. A peer can never crash an agent with a packet.

Message types are append-only: never renumber or reuse a value.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import threading
import typing
import weakref
from dataclasses import dataclass, field
from enum import IntEnum
from operator import attrgetter
from typing import Any, ClassVar

import msgpack

#: Bumped whenever a message's fields change, so a peer from another release is refused
#: by name ("unsupported wire version") rather than by a field count. 2: attachments
#: carry ``entry_clock``.
VERSION = 2

#: Largest datagram we send or accept over UDP (fits a 1500-byte underlay MTU
#: minus IP/UDP headers, like memberlist's UDPBufferSize).
MAX_DATAGRAM = 1400
#: Largest stream message (push-pull / bulk sync over TCP).
MAX_STREAM = 32 * 1024 * 1024


class WireError(ValueError):
    """A peer sent something we cannot decode. Count it and drop the packet."""


class MsgType(IntEnum):
    """Append-only registry of message types."""

    PING = 1
    INDIRECT_PING = 2
    ACK = 3
    NACK = 4
    GOSSIP = 5
    PUSH_PULL = 6
    TABLE_GOSSIP = 7
    BULK_SYNC = 8
    NETWORK_GOSSIP = 9


class UpdateKind(IntEnum):
    """Membership update kinds carried by piggybacked gossip."""

    ALIVE = 1
    SUSPECT = 2
    DEAD = 3  # a DEAD about oneself (src == node) is a graceful leave


class MemberStateCode(IntEnum):
    ALIVE = 1
    SUSPECT = 2
    DEAD = 3
    LEFT = 4


# --- nested records ---------------------------------------------------------------


# Record numbers. Every entry and attachment object gets a number that no other live
# record has, given back when the object is gone and reused, smallest first, so the
# numbers in use stay dense. A node keeps "which record objects do I hold" as one byte
# per number (see core/tables.py): the held check of every gossip message then reads one
# small array of the node's instead of a map of thousands. Not on the wire, not compared;
# a copy or unpickled record is a new object, so it gets a number of its own.
class _NumberPool:
    """Numbers handed out smallest given-back first, else the next never used one.

    A number may be given back on another thread (an agent's data-plane jobs drop
    records): :meth:`take` is one atomic C call per step, so a number is never handed
    out twice.
    """

    __slots__ = ("free", "_fresh")

    def __init__(self) -> None:
        self.free: list[int] = []  # a heap
        self._fresh = itertools.count()

    def take(self) -> int:
        try:
            return heapq.heappop(self.free)
        except IndexError:
            return next(self._fresh)


_record_numbers = _NumberPool()
_numbers_end = 0  # every number in use is below it (but see record_numbers_end)


def _take_number() -> int:
    global _numbers_end
    n = _record_numbers.take()
    if n >= _numbers_end:
        _numbers_end = n + 1
    return n


def _give_back(
    record: object, _push: Any = heapq.heappush, _free: list[int] = _record_numbers.free
) -> None:
    try:
        _push(_free, record.num)  # type: ignore[attr-defined]
    except AttributeError:  # not numbered: its __init__ failed
        pass


def record_numbers_end() -> int:
    """Every record number in use is below this (records made on one thread; with
    several at once it may briefly lag, so a reader must tolerate a larger number)."""
    return _numbers_end


# Key numbers. Every broadcast queue finds "the item I already hold for this record's
# key" when a newer record replaces it. A dict from key to item costs each node a slot
# of ~35 bytes per queued record, and during a burst every node queues nearly every
# record: at thousands of nodes that was a quarter of the run's memory. So each key
# in use gets a small number (one space per record class), and a queue keeps an array
# indexed by it (4 bytes per slot). A number belongs to the key while any record with
# that key exists (the records hold it) and is then given back for reuse, so the
# numbers stay as dense as the live keys. Not on the wire, not compared.


class KeyNumber:
    """The number of one record key, held by every live record with that key."""

    __slots__ = ("num", "__weakref__")

    def __init__(self, num: int) -> None:
        self.num = num

    def __repr__(self) -> str:
        return f"KeyNumber({self.num})"


class _KeyRef(weakref.KeyedRef):
    """A weak reference to a key's :class:`KeyNumber` that remembers the number, so the
    number can be given back once the object is gone (not from a finaliser, which
    another thread could still reach the object through the map during)."""

    __slots__ = ("num",)

    def __new__(cls, ob: KeyNumber, callback: Any, key: Any, num: int) -> _KeyRef:
        self = super().__new__(cls, ob, callback, key)
        self.num = num
        return self

    def __init__(self, ob: KeyNumber, callback: Any, key: Any, num: int) -> None:
        super().__init__(ob, callback, key)


class KeyNumbers:
    """Dense numbers for the keys of one record class (see the comment above)."""

    def __init__(self) -> None:
        self._live: dict[Any, _KeyRef] = {}
        self._numbers = _NumberPool()
        # Records are made on the agent's event-loop thread and may be freed on its
        # data-plane thread. Reentrant: a collection started while numbering a key may
        # give other numbers back on the same thread.
        self._lock = threading.RLock()

    def of(self, key: Any) -> KeyNumber | None:
        """The number of ``key``: the live one, else a free or fresh one; ``None`` for
        an unhashable key (a malformed record, which no queue takes)."""
        try:
            ref = self._live.get(key)  # the usual case: a record with this key exists
        except TypeError:
            return None
        k = ref() if ref is not None else None
        if k is not None:
            return k
        with self._lock:
            ref = self._live.get(key)
            k = ref() if ref is not None else None
            if k is None:
                num = self._numbers.take()
                k = KeyNumber(num)
                self._live[key] = _KeyRef(k, self._gone, key, num)
            return k

    def _gone(self, ref: _KeyRef, _push: Any = heapq.heappush) -> None:
        """A key's number object is gone: forget it (unless the key was numbered again
        meanwhile) and give the number back."""
        with self._lock:
            if self._live.get(ref.key) is ref:
                del self._live[ref.key]
            _push(self._numbers.free, ref.num)


_entry_keys = KeyNumbers()
_attachment_keys = KeyNumbers()


def _remake(cls: type, values: dict[str, Any]) -> Any:
    return cls(**values)


def _reduce(record: Any) -> tuple[Any, tuple[type, dict[str, Any]]]:
    """Copy and pickle a record through its constructor, so the copy is numbered anew."""
    cls = type(record)
    return _remake, (
        cls,
        {f.name: getattr(record, f.name) for f in dataclasses.fields(cls) if f.init},
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class MemberUpdate:
    """One membership fact: node is alive/suspect/dead at incarnation.

    ``src`` is who claims it (for suspect/dead); ``epoch`` identifies the node's
    boot, so a restarted node's stale state can be replaced rather than merged.
    """

    kind: int
    node: str
    incarnation: int
    addr: str = ""
    src: str = ""
    epoch: int = 0
    #: This record's encoded size, 0 until :func:`record_size` first measures it.
    #: Derived: not on the wire nor compared.
    wire_size: int = field(default=0, init=False, repr=False, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class MemberState:
    """A full member record, exchanged in push-pull sync."""

    node: str
    addr: str
    incarnation: int
    state: int
    epoch: int = 0
    #: This record's encoded size, 0 until :func:`record_size` first measures it.
    #: Derived: not on the wire nor compared.
    wire_size: int = field(default=0, init=False, repr=False, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class Entry:
    """One replicated table entry (NetworkDB-like).

    Ordering between two versions of the same (network, table, key) is
    ``(owner_epoch, ltime, owner)``: higher wins. ``deleted`` marks a tombstone.
    ``value`` is a small str->str map (for endpoints: name, ip, mac, vtep).
    """

    network: str
    table: str
    key: str
    owner: str
    owner_epoch: int
    ltime: int
    deleted: bool
    value: dict[str, str]
    #: ``(table, key)``, built once: what a node files this entry under, looked up for
    #: every entry of every gossip message. Derived, so not on the wire nor compared.
    ref: tuple[str, str] = field(init=False, repr=False, compare=False)
    #: This object's record number (see ``_take_number``).
    num: int = field(init=False, repr=False, compare=False)
    #: The number of ``ref`` among entry keys (see :class:`KeyNumbers`).
    key_number: KeyNumber | None = field(init=False, repr=False, compare=False)
    #: ``key_number.num``, copied: a broadcast queue reads it for every record queued,
    #: and the record is in the CPU cache then where the number object may not be.
    key_num: int | None = field(init=False, repr=False, compare=False)
    #: This record's encoded size, 0 until :func:`record_size` first measures it.
    #: Derived: not on the wire nor compared.
    wire_size: int = field(default=0, init=False, repr=False, compare=False)
    #: True once a receiver found every field well-formed (``core/tables.py``): a
    #: record is immutable and, in the simulator, shared by every node, so the first
    #: receiver checks it for all. Derived: not on the wire nor compared.
    checked: bool = field(default=False, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ref = (self.table, self.key)
        object.__setattr__(self, "ref", ref)
        object.__setattr__(self, "num", _take_number())
        kn = _entry_keys.of(ref)
        object.__setattr__(self, "key_number", kn)
        object.__setattr__(self, "key_num", kn.num if kn is not None else None)

    def __del__(self, _give_back: Any = _give_back) -> None:  # bound: survives module teardown
        _give_back(self)

    __reduce__ = _reduce


@dataclass(frozen=True, slots=True, kw_only=True)
class NetworkAttachment:
    """Node ``node`` is (or, with ``leaving``, no longer is) attached to ``network``."""

    node: str
    network: str
    ltime: int
    leaving: bool
    epoch: int = 0
    #: The node's table (entry) Lamport clock when it announced this. Its entries with
    #: a larger ``ltime`` were written after this announcement: for a leave, proof of a
    #: rejoin (the ``leave_clock`` extension, docs/tables.md).
    entry_clock: int = 0
    #: ``(node, network)``, built once: the record's key in a broadcast queue (one
    #: object per record, shared by every node's queue). Derived: not on the wire.
    ref: tuple[str, str] = field(init=False, repr=False, compare=False)
    #: This object's record number (see ``_take_number``).
    num: int = field(init=False, repr=False, compare=False)
    #: The number of ``ref`` among attachment keys (see :class:`KeyNumbers`).
    key_number: KeyNumber | None = field(init=False, repr=False, compare=False)
    #: ``key_number.num``, copied: a broadcast queue reads it for every record queued,
    #: and the record is in the CPU cache then where the number object may not be.
    key_num: int | None = field(init=False, repr=False, compare=False)
    #: This record's encoded size, 0 until :func:`record_size` first measures it.
    #: Derived: not on the wire nor compared.
    wire_size: int = field(default=0, init=False, repr=False, compare=False)
    #: True once a receiver found every field well-formed (``core/tables.py``): a
    #: record is immutable and, in the simulator, shared by every node, so the first
    #: receiver checks it for all. Derived: not on the wire nor compared.
    checked: bool = field(default=False, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ref = (self.node, self.network)
        object.__setattr__(self, "ref", ref)
        object.__setattr__(self, "num", _take_number())
        kn = _attachment_keys.of(ref)
        object.__setattr__(self, "key_number", kn)
        object.__setattr__(self, "key_num", kn.num if kn is not None else None)

    def __del__(self, _give_back: Any = _give_back) -> None:  # bound: survives module teardown
        _give_back(self)

    __reduce__ = _reduce


# --- messages ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    TYPE: ClassVar[MsgType]


@dataclass(frozen=True, slots=True, kw_only=True)
class Ping(Message):
    TYPE: ClassVar[MsgType] = MsgType.PING
    seq: int
    target: str  # node name the sender believes lives at the destination
    source: str
    source_addr: str
    updates: tuple[MemberUpdate, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class IndirectPing(Message):
    TYPE: ClassVar[MsgType] = MsgType.INDIRECT_PING
    seq: int
    target: str
    target_addr: str
    source: str
    source_addr: str
    want_nack: bool = True
    updates: tuple[MemberUpdate, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Ack(Message):
    TYPE: ClassVar[MsgType] = MsgType.ACK
    seq: int
    source: str
    updates: tuple[MemberUpdate, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Nack(Message):
    TYPE: ClassVar[MsgType] = MsgType.NACK
    seq: int
    source: str
    updates: tuple[MemberUpdate, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Gossip(Message):
    TYPE: ClassVar[MsgType] = MsgType.GOSSIP
    source: str
    updates: tuple[MemberUpdate, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class PushPull(Message):
    """Full membership state exchange (stream). ``reply`` marks the answer."""

    TYPE: ClassVar[MsgType] = MsgType.PUSH_PULL
    source: str
    source_addr: str
    join: bool
    reply: bool
    members: tuple[MemberState, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class TableGossip(Message):
    """Epidemic table updates for one network, sent only to that network's nodes."""

    TYPE: ClassVar[MsgType] = MsgType.TABLE_GOSSIP
    source: str
    network: str
    entries: tuple[Entry, ...] = ()
    #: The entries' record numbers (an ``array``, in order), handed out by the sender's
    #: broadcast queue with them (core/queue.py keeps each record's number beside it),
    #: so receivers' held checks need not read the records. None for a message that came
    #: off the wire. Derived: not on the wire nor compared.
    nums: Any = field(default=None, init=False, repr=False, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class BulkSync(Message):
    """Anti-entropy: all entries of the listed networks plus all attachments (stream)."""

    TYPE: ClassVar[MsgType] = MsgType.BULK_SYNC
    source: str
    reply: bool
    networks: tuple[str, ...] = ()
    attachments: tuple[NetworkAttachment, ...] = ()
    entries: tuple[Entry, ...] = ()
    #: The sender's held bytes (core/tables.py) for attachments and for entries when it
    #: made the message, ``bytes`` copies in which each of its records is marked: a
    #: receiver that holds every record so marked holds every record of the message
    #: and need not read them (see ``Tables._on_bulk_sync``). None for a message that
    #: came off the wire. Derived: not on the wire nor compared.
    att_marks: Any = field(default=None, init=False, repr=False, compare=False)
    entry_marks: Any = field(default=None, init=False, repr=False, compare=False)
    #: The records' numbers (``array``s, in the order of ``attachments`` and
    #: ``entries``), kept by the sender beside its records, so a receiver's held check
    #: need not read the records; None off the wire (and ``entry_nums`` None when the
    #: sender had hidden records). Derived: not on the wire nor compared.
    att_nums: Any = field(default=None, init=False, repr=False, compare=False)
    entry_nums: Any = field(default=None, init=False, repr=False, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class NetworkGossip(Message):
    """Cluster-wide gossip of node/network attachments."""

    TYPE: ClassVar[MsgType] = MsgType.NETWORK_GOSSIP
    source: str
    attachments: tuple[NetworkAttachment, ...] = ()
    #: The attachments' record numbers (an ``array``, in order), handed out by the
    #: sender's broadcast queue with them, as ``TableGossip.nums``. None for a message
    #: that came off the wire. Derived: not on the wire nor compared.
    nums: Any = field(default=None, init=False, repr=False, compare=False)


MESSAGES: dict[int, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Ping,
        IndirectPing,
        Ack,
        Nack,
        Gossip,
        PushPull,
        TableGossip,
        BulkSync,
        NetworkGossip,
    )
}

# --- codec ------------------------------------------------------------------------


def _packb(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


_RECORDS = (MemberUpdate, MemberState, Entry, NetworkAttachment)

# Per class: list of (field name, kind, record class or None)
_Schema = list[tuple[str, str, type | None]]
_SCHEMAS: dict[type, _Schema] = {}


def _schema(cls: type) -> _Schema:
    sch = _SCHEMAS.get(cls)
    if sch is not None:
        return sch
    hints = typing.get_type_hints(cls)
    sch = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue  # derived or local (Entry.ref, record numbers)
        t = hints[f.name]
        origin = typing.get_origin(t)
        if t is int:
            sch.append((f.name, "int", None))
        elif t is str:
            sch.append((f.name, "str", None))
        elif t is bool:
            sch.append((f.name, "bool", None))
        elif origin is dict:
            sch.append((f.name, "strmap", None))
        elif origin is tuple:
            (inner, _ellipsis) = typing.get_args(t)
            if inner is str:
                sch.append((f.name, "strs", None))
            elif inner in _RECORDS:
                sch.append((f.name, "records", inner))
            else:  # pragma: no cover - schema bug
                raise TypeError(f"unsupported tuple type {t} in {cls.__name__}")
        else:  # pragma: no cover - schema bug
            raise TypeError(f"unsupported field type {t} in {cls.__name__}")
    _SCHEMAS[cls] = sch
    return sch


_ENCODERS: dict[type, Any] = {}


def _encoder(cls: type) -> Any:
    """A generated function turning one ``cls`` instance into a list (hot in the simulator).

    Generated from the schema, like ``namedtuple`` does, because attribute access in a
    generic loop costs several times more per field.
    """
    enc = _ENCODERS.get(cls)
    if enc is not None:
        return enc
    env: dict[str, Any] = {}
    parts = []
    for name, kind, rec in _schema(cls):
        if kind == "records":
            env[f"_e_{name}"] = _encoder(rec)
            parts.append(f"[_e_{name}(r) for r in o.{name}]")
        elif kind == "strs":
            parts.append(f"list(o.{name})")
        else:
            parts.append(f"o.{name}")
    src = f"def _enc(o):\n    return [{', '.join(parts)}]\n"
    exec(src, env)  # noqa: S102 - code built only from our own dataclass field names
    enc = _ENCODERS[cls] = env["_enc"]
    return enc


def _to_list(obj: Any) -> list:
    return _encoder(type(obj))(obj)


# Records worth interning on decode: a peer retransmits the same entry and attachment
# many times, and the tables recognise a record they already hold by identity (as in
# the simulator, where one object travels to every node). Decoding an equal record again
# returns the object decoded first, so the agent takes the same fast path.
_INTERNED = (Entry, NetworkAttachment)
#: Bound on the interned records; past it the memo starts over (it is only a cache).
_INTERN_MAX = 1 << 13
_interned: dict[tuple, Any] = {}
_DECODERS: dict[type, Any] = {}


def _decoder(cls: type) -> Any:
    """A generated function ``(items, where) -> cls`` checking every field of one record
    or message as it came off the wire (what :func:`decode` does per record).

    Generated from the schema, as :func:`_encoder` is: a generic loop over the fields
    cost several times more per record, and a datagram carries dozens of records.
    Every check and every error message is the one of the field's kind.
    """
    dec = _DECODERS.get(cls)
    if dec is not None:
        return dec
    sch = _schema(cls)
    env: dict[str, Any] = {"WireError": WireError, "cls": cls, "_interned": _interned}
    names = [f"v{i}" for i in range(len(sch))]
    lines = [
        "def _dec(items, where):",
        f"    if not isinstance(items, list) or len(items) != {len(sch)}:",
        f"        raise WireError(f'{{where}}: expected {len(sch)} fields for {cls.__name__}')",
    ]
    if names:
        lines.append(f"    {', '.join(names)}{',' if len(names) == 1 else ''} = items")
    key, checks = [], []  # the scalars (an interned record's key); each field's checks
    for (name, kind, rec), v in zip(sch, names, strict=True):
        if kind in ("int", "str", "bool"):
            checks.append([
                f"    if type({v}) is not {kind}:",
                f"        raise WireError(f'{{where}}.{name}: expected {kind}, got "
                f"{{type({v}).__name__}}')",
            ])  # fmt: skip
            key.append(v)
        elif kind == "strmap":
            checks.append([
                f"    if not isinstance({v}, dict):",
                f"        raise WireError(f'{{where}}.{name}: expected map of str to str')",
                f"    for k, x in {v}.items():",
                "        if type(k) is not str or type(x) is not str:",
                f"            raise WireError(f'{{where}}.{name}: expected map of str to str')",
            ])  # fmt: skip
        elif kind == "strs":
            checks.append([
                f"    if not isinstance({v}, list):",
                f"        raise WireError(f'{{where}}.{name}: expected list of str')",
                f"    for x in {v}:",
                "        if type(x) is not str:",
                f"            raise WireError(f'{{where}}.{name}: expected list of str')",
                f"    {v} = tuple({v})",
            ])  # fmt: skip
        else:
            assert rec is not None
            env[f"_d_{name}"] = _decoder(rec)
            checks.append([
                f"    if not isinstance({v}, list):",
                f"        raise WireError(f'{{where}}.{name}: expected list of {rec.__name__}')",
                f"    w = where + '.{name}'",
                f"    {v} = tuple([_d_{name}(r, w) for r in {v}])",
            ])  # fmt: skip
    build = f"cls({', '.join(f'{n}={v}' for (n, _, _), v in zip(sch, names, strict=True))})"
    if cls in _INTERNED:
        # Keyed by the scalars, checked first (as in field order: a map may only come
        # last). A map equal to the interned record's is a map of str to str itself (a
        # str equals nothing else), so a hit needs no walk through it.
        maps = [(n, v) for (n, kind, _), v in zip(sch, names, strict=True) if kind == "strmap"]
        assert len(key) + len(maps) == len(sch) and all(
            kind != "strmap" for _, kind, _ in sch[: len(key)]
        ), f"{cls.__name__}: interned records hold scalars, then at most maps"
        for block in checks[: len(key)]:
            lines += block
        same = "".join(f" and got.{n} == {v}" for n, v in maps)
        lines += [
            f"    key = ({', '.join(key)},)",
            "    got = _interned.get(key)",
            f"    if got is not None and type(got) is cls{same}:",
            "        return got",
        ]
        for block in checks[len(key) :]:
            lines += block
        lines += [
            f"    if len(_interned) >= {_INTERN_MAX}:",
            "        _interned.clear()",
            f"    got = _interned[key] = {build}",
            "    return got",
        ]
    else:
        for block in checks:
            lines += block
        lines.append(f"    return {build}")
    exec("\n".join(lines) + "\n", env)  # noqa: S102 - built only from our own field names
    dec = _DECODERS[cls] = env["_dec"]
    return dec


def encode(msg: Message) -> bytes:
    """Encode a message to bytes."""
    return _packb([VERSION, int(msg.TYPE), *_to_list(msg)])


_set_attr = object.__setattr__
_wire_size_of = attrgetter("wire_size")


def record_size(record: Any) -> int:
    """Encoded size of one nested record (what it adds to a packet).

    Records are immutable, so a record's size is measured once and kept in its own
    ``wire_size`` slot; in the simulator one record object travels to every node, so
    one measurement serves them all. (A memo by ``id`` kept it before: a map of tens of
    thousands of sizes, and at 10,000 nodes nearly every look-up missed the CPU cache.)
    """
    size = record.wire_size
    if not size:
        size = len(_packb(_to_list(record)))
        _set_attr(record, "wire_size", size)  # derived, so frozen only to callers
    return size


_SHELLS: dict[type, Any] = {}


def _shell(cls: type) -> Any:
    """A generated function: (message with every record field emptied as a list, the
    names of its record fields). Sizing the shell plus each record gives the size."""
    hit = _SHELLS.get(cls)
    if hit is not None:
        return hit
    env: dict[str, Any] = {}
    parts, recs = [], []
    for name, kind, _ in _schema(cls):
        if kind == "records":
            parts.append("[]")
            recs.append(f"o.{name}")
        elif kind == "strs":
            parts.append(f"list(o.{name})")
        else:
            parts.append(f"o.{name}")
    src = (
        f"def _shell(o):\n    return [{VERSION}, {int(cls.TYPE)}, {', '.join(parts)}], "
        f"({', '.join(recs)}{',' if recs else ''})\n"
    )
    exec(src, env)  # noqa: S102 - code built only from our own dataclass field names
    fn = _SHELLS[cls] = env["_shell"]
    return fn


def _array_header(n: int) -> int:
    return 1 if n < 16 else 3 if n < 65536 else 5


def records_message_size(empty_size: int, count: int, records_size: int) -> int:
    """``len(encode(msg))`` of a message with one record field, from its parts.

    ``empty_size`` is the length of the message with that field empty, ``count`` the
    records it holds and ``records_size`` the sum of their :func:`record_size`.
    """
    return empty_size + records_size + _array_header(count) - 1


def encoded_size(msg: Message) -> int:
    """``len(encode(msg))`` without re-encoding shared records every time.

    For the simulator, which never encodes: the message minus its records is encoded,
    and each nested record adds its :func:`record_size`, measured once per record (plus the growth of
    its array's header past 15 items).
    """
    shell, groups = _shell(type(msg))(msg)
    size = len(_packb(shell))
    for recs in groups:
        if recs:
            sizes = list(map(_wire_size_of, recs))
            # All measured already (the usual case): a C-level sum.
            size += sum(sizes) if 0 not in sizes else sum(map(record_size, recs))
            size += _array_header(len(recs)) - 1
    return size


def decode(data: bytes, max_size: int = MAX_DATAGRAM) -> Message:
    """Decode bytes into a message, or raise :class:`WireError`.

    ``max_size`` bounds the input (use :data:`MAX_STREAM` for stream messages).
    """
    if len(data) > max_size:
        raise WireError(f"message of {len(data)} bytes exceeds limit of {max_size}")
    if not data:
        raise WireError("empty message")
    try:
        obj = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_str_len=max_size,
            max_bin_len=max_size,
            max_array_len=max_size,
            max_map_len=max_size,
            max_ext_len=0,
        )
    except WireError:
        raise
    except Exception as exc:  # msgpack raises several unrelated types
        raise WireError(f"undecodable msgpack: {exc.__class__.__name__}: {exc}") from None
    if not isinstance(obj, list) or len(obj) < 2:
        raise WireError("expected [version, type, ...] array")
    version, mtype = obj[0], obj[1]
    if version != VERSION or type(version) is not int:
        raise WireError(f"unsupported wire version {version!r} (expected {VERSION})")
    cls = MESSAGES.get(mtype) if type(mtype) is int else None
    if cls is None:
        raise WireError(f"unknown message type {mtype!r}")
    return _decoder(cls)(obj[2:], cls.__name__)
