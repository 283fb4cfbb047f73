"""NetworkDB-like replicated tables: per-network entries, Lamport clocks, tombstones.

Sans-I/O: inputs are :meth:`Tables.receive`, :meth:`Tables.handle_timer`, membership
facts and the local API; outputs are pulled with :meth:`Tables.take_sends`,
:meth:`Tables.take_events` and :meth:`Tables.next_timer`.

The rules, all applied in :meth:`Tables._merge` and :meth:`Tables._store`:

* An entry is identified by ``(network, table, key)``. Two versions compare by
  ``(owner_epoch, ltime, owner)``: the higher wins, an equal one is a duplicate.
* A stored record is *live*, a *tombstone* (the owner deleted it: a real version that
  is gossiped and bulk-synced), or *hidden* (a local tombstone: we concluded that its
  owner went down, left the network or restarted; never sent, because it is our
  conclusion and not the owner's word). Tombstones and hidden records are forgotten
  ``reap_interval`` after they stopped being live.
* Accepting a peer's version of someone else's entry:

  =====================  ==========================================================
  stored record          the incoming version is accepted when
  =====================  ==========================================================
  none                   always (with ``unknown_tombstones`` off, NetworkDB's rule: a
                         delete that came by gossip is dropped; bulk sync stores it)
  live or tombstone      its version is strictly higher
  hidden, same owner     its version is higher or equal (equal: the owner is back;
                         with ``local_tombstones`` off, a record hidden by a network
                         leave refuses the equal version, as NetworkDB's forged
                         tombstones did before moby#50342)
  hidden, other owner    always (the hidden record exists only here)
  =====================  ==========================================================

  Before that, a *live* incoming version is dropped when its owner is known down at
  that epoch, has restarted since (older epoch) or has left the network.
* Our own entries: we are the authority. A peer's copy is never stored; if a peer
  holds a live copy newer than what we have (a previous boot's entry, or one whose
  tombstone was reaped), we answer with a fresh version that beats it.
* Every change of the local live view emits exactly one :class:`EntryEvent`:
  absent -> live CREATE, live -> live with another owner or value UPDATE,
  live -> absent DELETE (carrying the value that was live). A newer version of a live
  entry with the same owner and value emits REFRESH: the view is unchanged (nothing to
  program), but observers measuring convergence must see the node hold that version.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
import random
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from operator import and_, attrgetter, eq, getitem, not_
from typing import Any

from overlaysim.core.byname import ByName, _numbers, name_number
from overlaysim.core.config import TableConfig
from overlaysim.core.events import EntryEvent, EntryEventKind, Send
from overlaysim.core.formed import formed_peers
from overlaysim.core.queue import TransmitLimitedQueue, record_size
from overlaysim.core.wire import (
    BulkSync,
    Entry,
    Message,
    NetworkAttachment,
    NetworkGossip,
    TableGossip,
    encode,
    encoded_size,
    record_numbers_end,
    records_message_size,
)

__all__ = [
    "EntryExistsError",
    "EntryTooLargeError",
    "NoSuchEntryError",
    "NotAttachedError",
    "NotOwnerError",
    "Tables",
    "TablesError",
    "entry_version",
]

_MAX_INT = 2**63 - 1  # keeps Lamport times encodable whatever a peer sends
#: A gossip message's records array header grows from 1 to 3 bytes past 15 items: the
#: room kept for it when packing records.
_HEADER_GROWTH = 2
#: (table, key) inside one network. A plain ``tuple`` to the type checker: compiled by
#: mypyc (``make compiled``), a ``tuple[str, str]`` is kept unboxed and made again at
#: every store, so the keys every node shares (:func:`_share`) would be one per node.
_Key = tuple


class TablesError(ValueError):
    """Local misuse of the tables API: a bug in the caller, never a peer's fault."""


class NotAttachedError(TablesError):
    """The operation needs this node to be attached to the network."""


class EntryExistsError(TablesError):
    """``create_entry`` on a key that is live, or tombstoned by a newer boot."""


class NoSuchEntryError(TablesError):
    """``update_entry``/``delete_entry`` on a key that is not live."""


class NotOwnerError(TablesError):
    """Only an entry's owner may update or delete it."""


class EntryTooLargeError(TablesError):
    """The entry would not fit in one gossip datagram."""


def entry_version(e: Entry) -> tuple:  # a plain tuple: see _Key
    """The order between versions of one entry: higher wins."""
    return (e.owner_epoch, e.ltime, e.owner)


@dataclass(slots=True)
class _Record:
    entry: Entry
    hidden: bool = False
    reap_at: float | None = None  # set while not live
    #: Hidden because its owner left the network, with ``local_tombstones`` off: it then
    #: refuses the owner's same version, like NetworkDB's forged tombstones.
    forged: bool = False
    #: ``entry`` while visible, None while hidden: "is this the very version we hold?"
    #: is then one attribute read (see :func:`_holds`). ``hidden`` never changes
    #: after construction.
    held: Entry | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.held = None if self.hidden else self.entry

    @property
    def live(self) -> bool:
        return not self.hidden and not self.entry.deleted


#: Canonical copies of small immutable values that every node would otherwise hold its
#: own copy of: entry keys ``(table, key)``. With N nodes each holding a value per
#: entry, one 32-56 byte object per (node, entry) pair adds up to gigabytes at
#: thousands of nodes; shared, it is one object per value. Equal values are
#: interchangeable, so sharing changes no result. Bounded; past the bound the memo starts
#: over (it is only a cache).
_SHARED_MAX = 1 << 18
_shared: dict[object, object] = {}


def _share(v):  # type: ignore[no-untyped-def]
    """The canonical object equal to ``v`` (an int or a tuple of str)."""
    s = _shared.get(v)
    if s is None:
        if len(_shared) >= _SHARED_MAX:
            _shared.clear()
        _shared[v] = s = v
    return s


#: The event kinds, read as module constants: an attribute of an ``Enum`` class goes
#: through its metaclass's ``__getattr__`` hook (about 90 ns, where a global is a few),
#: and one is read for every record a node accepts.
_CREATE, _UPDATE, _DELETE, _TOMBSTONE, _REFRESH = (
    EntryEventKind.CREATE,
    EntryEventKind.UPDATE,
    EntryEventKind.DELETE,
    EntryEventKind.TOMBSTONE,
    EntryEventKind.REFRESH,
)

#: A record's key in a broadcast queue: the number of its ``ref`` among the keys in use
#: (``Entry.key_num``, ``NetworkAttachment.key_num``: their ``key_number``'s, copied),
#: read when an item is queued or retired, not kept per item.
_key_of = attrgetter("key_num")


@dataclass(slots=True)
class _Network:
    """What this node stores about one network."""

    records: dict[_Key, _Record] = field(default_factory=dict)
    #: Keys of each owner's records, in the order they were first stored: the key itself
    #: while the owner has one (the usual case: a dict per (node, owner) pair would be
    #: the largest per-pair cost), a dict used as an ordered set from two keys on.
    by_owner: ByName[_Key | dict[_Key, None]] = field(default_factory=ByName)
    queue: TransmitLimitedQueue | None = None  # while attached, or draining after a leave
    #: How many of ``records`` are not hidden, and the sum of their entries'
    #: :func:`record_size`: what a bulk sync carries of this network (see
    #: ``Tables._bulk_sized``), kept as records come and go.
    shown: int = 0
    shown_bytes: int = 0
    #: The record numbers of ``records``' entries, in ``records``' order (hidden ones
    #: too): a bulk sync hands them to its receiver with the entries it lists, so the
    #: receiver's held check need not read the entries (see ``Tables._bulk_msg``).
    nums: array = field(default_factory=lambda: array("I"))


def _owner_keys(st: _Network, owner: str) -> list[_Key]:
    """Keys of ``owner``'s records in ``st``, in index order (a copy)."""
    keys: Any = st.by_owner.get(owner)
    if keys is None:
        return []
    return list(keys) if type(keys) is dict else [keys]


def _index(st: _Network, owner: str, k: _Key) -> None:
    by_owner = st.by_owner
    keys: Any = by_owner.get(owner)
    if keys is None:
        by_owner[owner] = k
    elif type(keys) is dict:
        keys[k] = None
    elif keys != k:
        by_owner[owner] = {keys: None, k: None}


def _unindex(st: _Network, owner: str, k: _Key) -> None:
    by_owner = st.by_owner
    keys = by_owner.get(owner)
    if keys is None:
        return
    if type(keys) is dict:
        keys.pop(k, None)
        if len(keys) == 1:
            by_owner[owner] = next(iter(keys))
        elif not keys:
            del by_owner[owner]
    elif keys == k:
        del by_owner[owner]


#: The record of a live entry, by ``id`` of the entry: such a record (not hidden, no
#: reap time) is the same for every node holding that entry, and never changes, so in
#: the simulator, where one entry object travels to every node, N nodes share one.
#: Bounded like the other memos; the record keeps its entry alive, so an id is not
#: reused while remembered.
_LIVE_MAX = 1 << 16
_live: dict[int, _Record] = {}


def _live_record(entry: Entry) -> _Record:
    i = id(entry)
    got = _live.get(i)
    if got is None or got.entry is not entry:
        if len(_live) >= _LIVE_MAX:
            _live.clear()
        got = _live[i] = _Record(entry)
    return got


def _holds(records: dict[_Key, _Record], e: Entry) -> bool:
    """True if ``e`` is the very entry object of a visible record in ``records``.

    In the simulator one immutable entry object travels to every node, so "already hold
    this very version" needs no validation or merge. (This replaced a per-node set of
    held ids: one set slot per (node, entry) pair, 28+ bytes each, for a check that one
    lookup answers.) A malformed peer record is simply not held.
    """
    try:
        r = records.get(e.ref)
    except (AttributeError, TypeError):
        return False
    return r is not None and r.held is e


# "Is every record of this message the very one we hold?" is asked of every gossip
# message and bulk sync, for every record in it: the hottest check of a run. A node
# answers it from its held bytes (one per record number, see ``Tables._held_entries``)
# with C-level maps; a malformed record (no number) falls back to the per-record
# definitions, :func:`_holds` and :func:`_holds_attachment`, which give the same answer.
_network_of = attrgetter("network")
_num_of = attrgetter("num")  # a record object's number (core/wire.py)


def _hold(held: bytearray, record: Entry | NetworkAttachment) -> None:
    """Mark ``record`` held in a node's held bytes (see ``Tables._held_entries``)."""
    n = record.num
    if n >= len(held):
        held.extend(bytes(max(n + 1, record_numbers_end()) - len(held)))
    held[n] = 1


def _release(held: bytearray, record: Entry | NetworkAttachment) -> None:
    held[record.num] = 0


def _holding(
    held: bytearray, records: tuple | list, nums: Iterable[int] | None = None
) -> Iterable[int]:
    """Lazily, 1 or 0 per record: whether a node's held bytes mark that very object.
    ``nums``, when given, are the records' numbers, read instead of the records.
    Raises AttributeError for a record without a number (malformed), IndexError for one
    numbered beyond what the bytes were grown to (only when records are made on several
    threads at once): callers then ask the maps."""
    end = record_numbers_end()
    if len(held) < end:
        # Records numbered since the bytes last grew: not held, and reading their byte
        # must not fail.
        held.extend(bytes(end - len(held)))
    if nums is None:
        nums = map(_num_of, records)
    return map(getitem, itertools.repeat(held), nums)


def _not_holding(held: bytearray, records: tuple | list, nums: array | None = None) -> list:
    """The ``records`` whose held byte is 0, in order; when every one is held (the
    usual case) ``[]``, without building a list to say so. Raises as :func:`_holding`."""
    if all(_holding(held, records, nums)):
        return []
    return list(itertools.compress(records, map(not_, _holding(held, records, nums))))


def _covers(held: bytearray, marks: bytes | None) -> bool:
    """True if ``held`` marks every record that ``marks`` (a bulk sync's copy of its
    sender's held bytes, see ``BulkSync.att_marks``) does: then this node holds every
    record of that message, known without reading one of them.

    A bulk sync carries every record its sender holds (of the networks it names), up
    to 20,000 at 10,000 hosts, and late in a run the receiver holds them all already;
    reading each one's number (one cache miss per record, the objects being scattered
    over gigabytes) was a quarter of such a run. Comparing the two byte strings is a
    few big-integer operations over bytes that sit together. A sender's marks may
    include records the message does not carry (entries of other networks): then the
    answer can be False where every record sent is held, and the records are read.
    """
    if marks is None:
        return False
    return not int.from_bytes(marks, "little") & ~int.from_bytes(held, "little")


def _taken_numbers(q: TransmitLimitedQueue) -> array | None:
    """The record numbers of what ``q`` just handed out, in order, for the message that
    carries those records: its receivers' held checks read them instead of the records
    (one cache miss each, the objects being scattered over gigabytes at scale)."""
    return q.taken_nums


def _holds_now(held: bytearray, records: dict[_Key, _Record], network: str, e: object) -> bool:
    """:func:`_holds` for an entry of a gossip message on ``network``, by the node's held
    bytes (kept current while the message is merged): an entry is stored only under
    its own network, so "held, and of this network" is "held in these records"."""
    try:
        return held[e.num] == 1 and e.network == network  # type: ignore[attr-defined]
    except (AttributeError, IndexError):
        return _holds(records, e)  # type: ignore[arg-type]


def _holds_attachment_now(
    held: bytearray, attach: dict[str, dict[str, NetworkAttachment]], a: object
) -> bool:
    """:func:`_holds_attachment` by the node's held bytes (kept current while a message
    is merged)."""
    try:
        return held[a.num] == 1  # type: ignore[attr-defined]
    except (AttributeError, IndexError, TypeError):
        return _holds_attachment(attach, a)


def _first_not(test: Callable[[Any, Any], bool], held: Any, items: tuple | list) -> int:
    """Index of the first of ``items`` with ``test(held, item)`` false, else len: the
    plain definition, taken when the held bytes meet a malformed record."""
    for i, x in enumerate(items):
        if not test(held, x):
            return i
    return len(items)


def _holds_attachment(attach: dict[str, dict[str, NetworkAttachment]], a: object) -> bool:
    """True if ``a`` is the very attachment record held for its node and network."""
    try:
        recs = attach.get(a.network)  # type: ignore[attr-defined]
        return recs is not None and recs.get(a.node) is a  # type: ignore[attr-defined]
    except (AttributeError, TypeError):
        return False


class _NodeSet:
    """Set of node names with O(1) add/remove and O(k) random sampling.

    ``_pos`` maps a name's number (:func:`name_number`) to its position in ``_items``
    plus one, 0 where the name is not in the set: an array of raw ints, 4 bytes per
    (node, peer) pair where a :class:`ByName` slot is 8.
    """

    __slots__ = ("_items", "_pos")

    def __init__(self) -> None:
        self._items: list[str] = []
        self._pos = array("I")

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, node: object) -> bool:
        try:
            return self._pos[_numbers[node]] != 0  # type: ignore[index]
        except (KeyError, IndexError):
            return False

    def _grow(self, top: int) -> None:
        """Make room in ``_pos`` for name number ``top`` (new slots 0)."""
        pos = self._pos
        if top >= len(pos):
            pos.frombytes(bytes(pos.itemsize * (top + 1 - len(pos))))

    def _slot(self, node: str) -> int:
        """``node``'s number, the array grown to hold it."""
        i = _numbers.get(node)
        if i is None:
            i = name_number(node)
        if i >= len(self._pos):  # rare: no call on the hot path
            self._grow(i)
        return i

    def add(self, node: str) -> bool:
        i = self._slot(node)
        pos = self._pos
        if pos[i]:
            return False
        items = self._items
        items.append(node)
        pos[i] = len(items)
        return True

    def extend(self, nodes: list[str]) -> None:
        """Add ``nodes``, none of which is in the set yet."""
        if not nodes:
            return
        nums = [name_number(n) for n in nodes]
        self._grow(max(nums))
        pos = self._pos
        items = self._items
        for i, p in zip(nums, range(len(items) + 1, len(items) + 1 + len(nodes)), strict=True):
            pos[i] = p
        items.extend(nodes)

    def discard(self, node: str) -> None:
        i = _numbers.get(node)
        pos = self._pos
        if i is None or i >= len(pos) or not pos[i]:
            return
        p = pos[i] - 1
        pos[i] = 0
        last = self._items.pop()
        if last != node:  # swap the last one into the hole
            self._items[p] = last
            pos[_numbers[last]] = p + 1

    def sample(self, rng: random.Random, k: int) -> list[str]:
        return rng.sample(self._items, min(k, len(self._items)))

    def choice(self, rng: random.Random) -> str:
        return self._items[rng.randrange(len(self._items))]

    def members(self) -> list[str]:
        """The nodes, in the set's own (deterministic) order."""
        return list(self._items)

    def as_set(self) -> set[str]:
        return set(self._items)


def _int_ok(v: object) -> bool:
    return type(v) is int and 0 <= v <= _MAX_INT


def _strmap_ok(v: object) -> bool:
    return isinstance(v, dict) and all(type(a) is str and type(b) is str for a, b in v.items())


def _entry_ok(e: object) -> bool:
    # The flag lives in the record, which the caller reads next anyway: a memo keyed by
    # id was a look-up in a map of tens of thousands, nearly always a cache miss.
    if type(e) is Entry and e.checked:
        return True
    ok = _entry_check(e)
    if ok:
        object.__setattr__(e, "checked", True)
    return ok


def _attachment_ok(a: object) -> bool:
    if type(a) is NetworkAttachment and a.checked:
        return True
    ok = _attachment_check(a)
    if ok:
        object.__setattr__(a, "checked", True)
    return ok


def _entry_check(e: object) -> bool:
    return (
        isinstance(e, Entry)
        and type(e.network) is str
        and type(e.table) is str
        and type(e.key) is str
        and type(e.owner) is str
        and e.owner != ""
        and _int_ok(e.owner_epoch)
        and _int_ok(e.ltime)
        and type(e.deleted) is bool
        and _strmap_ok(e.value)
    )


def _attachment_check(a: object) -> bool:
    return (
        isinstance(a, NetworkAttachment)
        and type(a.node) is str
        and a.node != ""
        and type(a.network) is str
        and _int_ok(a.ltime)
        and _int_ok(a.epoch)
        and type(a.leaving) is bool
        and _int_ok(a.entry_clock)
    )


def _seq(v: object) -> Any:
    """A peer's collection field, or nothing if it is not one."""
    return v if isinstance(v, tuple | list) else ()


def _check_names(*names: object) -> None:
    for n in names:
        if type(n) is not str:
            raise TablesError(f"network, table and key must be str, got {n!r}")


class Tables:
    """One node's replicated tables (see the module docstring for the rules)."""

    def __init__(
        self, *, name: str, addr: str, config: TableConfig, rng: random.Random, epoch: int = 0
    ) -> None:
        self.name = name
        self.addr = addr
        self.config = config
        self.rng = rng
        self.epoch = epoch
        #: Peer records or messages ignored because they were malformed.
        self.dropped = 0
        self._clock = 0  # Lamport clock for table events
        self._net_clock = 0  # Lamport clock for attachment events
        self._nets: dict[str, _Network] = {}
        self._attached: dict[str, None] = {}  # networks we are on (ordered set)
        self._draining: set[str] = set()  # left, still gossiping our tombstones
        self._pending: dict[str, None] = {}  # joined, join sync not yet sent
        self._unsynced: set[str] = set()  # joined, no bulk sync covering it received yet
        self._resyncs: list[float] = []  # deadlines of join resyncs, in order
        # Attachments, cluster-wide: network -> node -> latest record.
        self._attach: dict[str, dict[str, NetworkAttachment]] = {}
        # Network -> the record numbers of ``_attach[network]``'s values, in the same
        # order (both maps gain a network together and never lose one): handed to a
        # bulk sync's receiver, as ``_Network.nums``.
        self._att_nums: dict[str, array] = {}
        # Any: a formed boot (core/formed.py) puts shared views of its own in place of
        # these node sets and maps, which a compiled build must not reject.
        self._peers: dict[str, Any] = {}  # attached, alive, not us
        self._recovered = _NodeSet()  # back after we declared them down: fetch what we hid
        # Membership facts.
        # Per-peer facts are ByName maps (a list slot per peer, see core/byname.py).
        self._addr: Any = ByName()  # alive members
        self._alive: Any = _NodeSet()
        self._epochs: Any = ByName()
        self._down: dict[str, int] = {}  # node -> highest epoch of it we saw die
        # Gossip.
        self._dirty: dict[str, None] = {}  # networks with queued table events
        self._net_queue = TransmitLimitedQueue(config.retransmit_mult, _key_of, _num_of)
        self._overheads: dict[str, int] = {}
        # How many attachment records this node holds, and the sum of their
        # record_size: a bulk sync carries them all (see _bulk_sized).
        self._atts = 0
        self._att_bytes = 0
        self._net_empty = len(encode(NetworkGossip(source=name)))
        self._net_overhead = self._net_empty + _HEADER_GROWTH
        # Timers.
        self._next_gossip: float | None = None
        self._next_bulk: float | None = None
        self._reap: list[tuple[float, int, str, _Key]] = []
        self._reap_seq = itertools.count()
        # Outputs.
        self._sends: list[Send] = []
        self._events: list[EntryEvent] = []
        # Which record objects this node holds, by record number (core/wire.py): byte
        # ``e.num`` of the first is 1 while ``e`` is the visible entry of a stored
        # record, byte ``a.num`` of the second while ``a`` is a stored attachment. Set
        # and cleared where those are stored and let go; read by the held checks of
        # every message (see "held checks" below).
        self._held_entries = bytearray()
        self._held_atts = bytearray()

    # -- lifecycle -------------------------------------------------------------------

    def start(self, now: float) -> None:
        """Arm the gossip and bulk-sync timers (random phases desynchronise nodes)."""
        cfg = self.config
        self._next_gossip = now + cfg.gossip_interval * self.rng.random()
        self._next_bulk = now + cfg.bulk_sync_interval * self.rng.random()

    # -- membership facts ------------------------------------------------------------

    def member_alive(self, node: str, addr: str, epoch: int, now: float) -> None:
        """``node`` is alive at ``addr``; a higher ``epoch`` replaces its older state."""
        if node == self.name or type(node) is not str:
            return
        known = self._epochs.get(node)
        if known is not None and epoch < known:
            return  # stale news about a previous boot
        self._epochs[node] = epoch
        false_alarm = self._down.pop(node, None) is not None and epoch == known
        first = not self._alive
        self._addr[node] = addr
        self._alive.add(node)
        if known is None or epoch > known:
            self._replace_older_boot(node, epoch, now)
        for network in self._nets_of(node):
            self._refresh_peer(network, node)
        if false_alarm and self.config.recovery_sync:
            self._recovered.add(node)
            self._roll_gossip(now)
        if first and self._pending:
            for network in list(self._pending):
                self._discover(network)

    def bootstrap(self, members: Iterable[tuple[str, str, int]], now: float) -> None:
        """``member_alive`` for each ``(node, addr, epoch)`` of a formed cluster at boot.

        For drivers that start from a converged cluster; not part of the protocol. On a
        fresh node (no networks, no member facts yet) each call would only record the
        member, so they are recorded in bulk; otherwise each goes through
        ``member_alive``. A fresh node given a tuple reads one shared copy of those facts
        until it changes them (see :mod:`overlaysim.core.formed`).
        """
        fresh = not (self._epochs or self._nets or self._attach or self._pending)
        if fresh and type(members) is tuple and (shared := formed_peers(members)) is not None:
            # One copy of the cluster's facts for every node until it changes them.
            self._epochs, self._addr, self._alive = shared.views(self.name, _NodeSet)  # type: ignore[assignment]
            return
        members = [m for m in members if m[0] != self.name and type(m[0]) is str]
        names = [m[0] for m in members]
        if not fresh or len(set(names)) != len(names):
            for node, addr, epoch in members:
                self.member_alive(node, addr, epoch, now)
            return
        self._epochs.update([(node, epoch) for node, _, epoch in members])
        self._addr.update([(node, addr) for node, addr, _ in members])
        self._alive.extend(names)

    def member_down(self, node: str, now: float) -> None:
        """``node`` is dead or left: hide all its entries, drop it from peer sets."""
        if node == self.name or type(node) is not str:
            return
        dead_epoch = self._epochs.get(node, 0)
        for network, st in self._nets.items():
            for k in _owner_keys(st, node):
                rec = st.records[k]
                dead_epoch = max(dead_epoch, rec.entry.owner_epoch)  # type: ignore[type-var]
                if rec.live:
                    self._store(network, st, k, rec.entry, now, hidden=True)
        self._down[node] = dead_epoch  # type: ignore[assignment]
        self._addr.pop(node, None)
        self._alive.discard(node)
        for network in self._nets_of(node):
            self._refresh_peer(network, node)

    # -- local API -------------------------------------------------------------------

    def join_network(self, network: str, now: float) -> None:
        """Attach: announce it cluster-wide, then bulk sync with ``join_sync_peers`` peers
        known on it (one; 0: every one, as NetworkDB), and once more
        ``join_resync_delay`` later."""
        _check_names(network)
        if network in self._attached:
            return
        self._attached[network] = None
        self._draining.discard(network)
        st = self._nets.setdefault(network, _Network())
        if st.queue is None:
            st.queue = TransmitLimitedQueue(self.config.retransmit_mult, _key_of, _num_of)
        self._announce(network, False, now)
        self._unsynced.add(network)
        self._roll_bulk(now)
        resync = self.config.join_resync_delay
        peers = self._peers.get(network)
        if peers:
            # A network in motion: entries may be spreading among peers that do not know
            # of us yet. A join that finds no peer is the network forming (a simulated
            # boot): every entry still waits in its owner's queue for a first peer.
            if resync > 0:
                self._resyncs.append(now + resync)
            k = self.config.join_sync_peers
            if k == 1:  # the model's one draw, as before the setting existed
                self._send_bulk(peers.choice(self.rng), [network])
            else:
                nodes = peers.members() if k <= 0 else peers.sample(self.rng, k)
                msg, size = self._bulk_sized([network], False)  # the same for every peer
                addr = self._addr
                self._sends.extend(Send(addr[n], msg, True, size) for n in nodes)
        else:
            self._pending[network] = None
            self._discover(network)

    def leave_network(self, network: str, now: float) -> None:
        """Detach: tombstone our entries, forget the others', announce the leave."""
        st = self._attached_state(network)
        del self._attached[network]
        self._pending.pop(network, None)
        self._unsynced.discard(network)
        for k, rec in list(st.records.items()):
            if rec.entry.owner != self.name:
                self._forget(network, st, k)
            elif rec.live:
                self._commit(network, st, k, {}, now, deleted=True)
        self._announce(network, True, now)
        if st.queue is not None and len(st.queue) and self._peers.get(network):
            self._draining.add(network)  # keep gossiping the tombstones until sent
        else:
            st.queue = None

    def create_entry(
        self, network: str, table: str, key: str, value: dict[str, str], now: float
    ) -> None:
        """Create an entry we own; the key must not be live on this node."""
        st = self._attached_state(network)
        _check_names(table, key)
        cur = st.records.get((table, key))
        if cur is not None:
            if cur.live:
                raise EntryExistsError(f"{network}/{table}/{key} exists (owner {cur.entry.owner})")
            if not cur.hidden and cur.entry.owner_epoch > self.epoch:
                # A version of ours would sort below that tombstone everywhere (the
                # epoch compares first), so it could never become live: refuse, and
                # say where and when the key can be used.
                left = max(0.0, (cur.reap_at or now) - now)
                raise EntryExistsError(
                    f"{network}/{table}/{key} was deleted by {cur.entry.owner}, which booted after "
                    f"this node (epoch {cur.entry.owner_epoch} > {self.epoch}); it can be "
                    f"created here once that delete is forgotten (in {left:.0f} s), or now "
                    f"on {cur.entry.owner} or a node that booted later"
                )
        self._commit(network, st, (table, key), value, now)

    def update_entry(
        self, network: str, table: str, key: str, value: dict[str, str], now: float
    ) -> None:
        """Replace the value of a live entry we own."""
        st = self._attached_state(network)
        self._owned(network, st, table, key)
        self._commit(network, st, (table, key), value, now)

    def delete_entry(self, network: str, table: str, key: str, now: float) -> None:
        """Delete a live entry we own (it becomes a tombstone)."""
        st = self._attached_state(network)
        self._owned(network, st, table, key)
        self._commit(network, st, (table, key), {}, now, deleted=True)

    # -- wire ------------------------------------------------------------------------

    def receive(self, src: str, msg: Message, now: float) -> bool:
        """Handle a table message from address ``src``; anything else is ignored.

        Returns False when the message certainly changed nothing (every record in it is
        the very one we hold), so a driver may skip collecting outputs; True otherwise.
        """
        if isinstance(msg, TableGossip):
            return self._on_table_gossip(msg, now)
        elif isinstance(msg, NetworkGossip):
            attach = self._attach
            todo = self._attachments_not_held(_seq(msg.attachments), msg.nums)
            if not todo:
                return False  # only the very records we hold (shared objects in the simulator)
            for a in todo:
                if _holds_attachment(attach, a):
                    continue  # the same record twice in one message: merged already
                if not _attachment_ok(a):
                    self.dropped += 1
                elif self._merge_attachment(a, now):
                    self._queue_attachment(a, now)  # spread news epidemically
        elif isinstance(msg, BulkSync):
            self._on_bulk_sync(src, msg, now)
        return True

    def handle_timer(self, now: float) -> None:
        """Run whatever is due: gossip round, bulk sync round, tombstone reaping."""
        cfg = self.config
        if self._next_gossip is not None and now >= self._next_gossip:
            self._gossip_round()
            self._next_gossip = _after(self._next_gossip, cfg.gossip_interval, now)
        if self._next_bulk is not None and now >= self._next_bulk:
            self._bulk_round()
            self._next_bulk = _after(self._next_bulk, cfg.bulk_sync_interval, now)
        resyncs = self._resyncs
        if resyncs and now >= resyncs[0]:
            del resyncs[: bisect.bisect_right(resyncs, now)]
            self._bulk_round()  # one round answers every join due by now
        reap = self._reap
        while reap and reap[0][0] <= now:
            reap_at, _, network, k = heapq.heappop(reap)
            st = self._nets.get(network)
            rec = st.records.get(k) if st is not None else None
            if rec is not None and rec.reap_at == reap_at and not rec.live:
                self._forget(network, st, k)  # type: ignore[arg-type]
                if not st.records and st.queue is None and network not in self._attached:  # type: ignore[union-attr]
                    del self._nets[network]

    def next_timer(self) -> float | None:
        """Earliest deadline, or None. Idle timers (nothing to gossip) are left out."""
        out = self._reap[0][0] if self._reap else None
        busy = self._dirty or len(self._net_queue) or len(self._recovered)
        if self._next_gossip is not None and busy:
            out = self._next_gossip if out is None else min(out, self._next_gossip)
        if self._next_bulk is not None and self._attached:
            out = self._next_bulk if out is None else min(out, self._next_bulk)
        if self._resyncs:
            out = self._resyncs[0] if out is None else min(out, self._resyncs[0])
        return out

    def take_sends(self) -> list[Send]:
        """Messages to deliver since the last call."""
        out, self._sends = self._sends, []
        return out

    def take_events(self) -> list[EntryEvent]:
        """Changes of the local live view since the last call."""
        out, self._events = self._events, []
        return out

    # -- queries ---------------------------------------------------------------------

    def entries(self, network: str, table: str | None = None) -> dict[_Key, Entry]:
        """Live entries of ``network`` (optionally one table), keyed ``(table, key)``."""
        st = self._nets.get(network)
        if st is None:
            return {}
        return {
            k: r.entry for k, r in st.records.items() if r.live and (table is None or k[0] == table)
        }

    def entry(self, network: str, table: str, key: str) -> Entry | None:
        """One live entry, or None (O(1), unlike :meth:`entries`)."""
        st = self._nets.get(network)
        rec = st.records.get((table, key)) if st is not None else None
        return rec.entry if rec is not None and rec.live else None

    def tombstones(self, network: str, table: str | None = None) -> dict[_Key, Entry]:
        """Deleted entries not yet reaped (hidden ones shown with ``deleted=True``)."""
        st = self._nets.get(network)
        if st is None:
            return {}
        return {
            k: r.entry if r.entry.deleted else replace(r.entry, deleted=True)
            for k, r in st.records.items()
            if not r.live and (table is None or k[0] == table)
        }

    def peers(self, network: str) -> set[str]:
        """Other alive nodes attached to ``network``."""
        ps = self._peers.get(network)
        return ps.as_set() if ps is not None else set()

    def networks(self) -> set[str]:
        """Networks this node is attached to."""
        return set(self._attached)

    def attachments(self, network: str) -> dict[str, NetworkAttachment]:
        """Latest known attachment record per node for ``network`` (including ours)."""
        return dict(self._attach.get(network, {}))

    # -- state transitions -----------------------------------------------------------

    def _store(
        self, network: str, st: _Network, k: _Key, entry: Entry, now: float, hidden: bool = False
    ) -> None:
        """Put a record in place and emit the event the live-view change implies."""
        self._replace(network, st, k, st.records.get(k), entry, now, hidden)

    def _replace(
        self,
        network: str,
        st: _Network,
        k: _Key,
        old: _Record | None,
        entry: Entry,
        now: float,
        hidden: bool = False,
    ) -> None:
        """:meth:`_store`, given ``old``, the record stored under ``k`` (None if none)."""
        if old is None:
            k = _share(k)  # a new key of records and by_owner: one copy for all nodes
        if hidden or entry.deleted:
            rec = _Record(entry, hidden)
            rec.reap_at = now + self.config.reap_interval
            heapq.heappush(self._reap, (rec.reap_at, next(self._reap_seq), network, k))
        else:
            rec = _live_record(entry)  # shared by every node holding it
        if old is not None and old.entry.owner != entry.owner:
            _unindex(st, old.entry.owner, k)
        _index(st, entry.owner, k)
        if old is not None and old.held is not None:
            _release(self._held_entries, old.held)
        if rec.held is not None:
            _hold(self._held_entries, rec.held)
        if old is None:
            st.nums.append(entry.num)
        elif old.entry is not entry:
            nums = st.nums
            nums[nums.index(old.entry.num)] = entry.num
        st.records[k] = rec
        if old is not None and not old.hidden:
            st.shown -= 1
            st.shown_bytes -= record_size(old.entry)
        if not rec.hidden:
            st.shown += 1
            st.shown_bytes += record_size(entry)
        before = old.entry if old is not None and old.live else None
        self._emit(network, k, before, entry if rec.live else None)
        if entry.deleted and before is None and (old is None or not old.entry.deleted):
            self._events.append(EntryEvent(_TOMBSTONE, network, k[0], k[1], entry.owner, {}))

    def _forget(self, network: str, st: _Network, k: _Key) -> None:
        rec = st.records.pop(k)
        st.nums.remove(rec.entry.num)
        if rec.held is not None:
            _release(self._held_entries, rec.held)
        if not rec.hidden:
            st.shown -= 1
            st.shown_bytes -= record_size(rec.entry)
        _unindex(st, rec.entry.owner, k)
        if rec.live:
            self._emit(network, k, rec.entry, None)

    def _emit(self, network: str, k: _Key, before: Entry | None, after: Entry | None) -> None:
        if after is None:
            if before is None:
                return
            kind, src = _DELETE, before
        elif before is None:
            kind, src = _CREATE, after
        elif before is after:
            return  # the very version (nothing a caller should do, but nothing changed)
        elif before.owner == after.owner and before.value == after.value:
            # A new version with the same content: nothing to reprogram, but this node
            # now holds the newer version (say a restarted owner's, when this node had
            # kept its previous boot's entry), and convergence of it must be seen.
            kind, src = _REFRESH, after
        else:
            kind, src = _UPDATE, after
        self._events.append(EntryEvent(kind, network, k[0], k[1], src.owner, src.value))

    def _merge(self, network: str, st: _Network, e: Entry, now: float) -> bool:
        """Merge a peer's version; True if it was accepted (worth spreading)."""
        if e.ltime > self._clock:
            self._clock = e.ltime  # Lamport: our next event orders after what we saw
        k = e.ref
        cur = st.records.get(k)
        if e.owner == self.name:
            self._reassert(network, st, k, cur, e, now)
            return False
        if e.owner_epoch < self._epochs.get(e.owner, 0):
            return False  # from a boot that membership says was replaced
        if not e.deleted and self._owner_gone(network, e):
            return False
        if cur is not None:
            ev, cv = entry_version(e), entry_version(cur.entry)
            if cur.hidden:
                if cur.entry.owner == e.owner and (ev < cv or (ev == cv and cur.forged)):
                    return False
            elif ev <= cv:
                return False
        self._replace(network, st, k, cur, e, now)
        return True

    def _owner_gone(self, network: str, e: Entry) -> bool:
        dead = self._down.get(e.owner)
        if dead is not None and e.owner_epoch <= dead:
            return True
        recs = self._attach.get(network)
        att = recs.get(e.owner) if recs is not None else None
        return att is not None and att.leaving and _before_leave(e, att, self.config.leave_clock)

    def _reassert(
        self, network: str, st: _Network, k: _Key, cur: _Record | None, e: Entry, now: float
    ) -> None:
        """A peer sent our own entry back: answer a stale live copy with a newer version."""
        if e.deleted or e.owner_epoch > self.epoch or network not in self._attached:
            return
        if cur is None:
            self._commit(network, st, k, {}, now, deleted=True)
        elif cur.entry.owner == self.name and entry_version(e) > entry_version(cur.entry):
            self._commit(network, st, k, cur.entry.value, now, deleted=cur.entry.deleted)

    def _commit(
        self,
        network: str,
        st: _Network,
        k: _Key,
        value: dict[str, str],
        now: float,
        deleted: bool = False,
    ) -> None:
        """Store and gossip a new version of an entry we own."""
        if not _strmap_ok(value):
            raise TablesError(f"value must be a dict of str to str, got {value!r}")
        e = Entry(
            network=network,
            table=k[0],
            key=k[1],
            owner=self.name,
            owner_epoch=self.epoch,
            ltime=self._clock + 1,
            deleted=deleted,
            value=dict(value),
        )
        if record_size(e) + self._overhead(network) > self.config.udp_buffer_size:
            raise EntryTooLargeError(f"{network}/{k[0]}/{k[1]} does not fit one gossip datagram")
        self._clock += 1
        self._store(network, st, k, e, now)
        self._enqueue(network, st, e, now)

    def _hide_owner(
        self,
        network: str,
        owner: str,
        max_epoch: int,
        now: float,
        forged: bool = False,
        leave: NetworkAttachment | None = None,
    ) -> None:
        """Hide ``owner``'s live entries of boots up to ``max_epoch``; for a ``leave``,
        those written before it (all of that boot's, without ``leave_clock``)."""
        st = self._nets.get(network)
        if st is None:
            return
        clock = self.config.leave_clock
        for k in _owner_keys(st, owner):
            rec = st.records[k]
            if not rec.live or rec.entry.owner_epoch > max_epoch:
                continue
            if leave is not None and not _before_leave(rec.entry, leave, clock):
                continue  # written after the leave: the rejoin's, which we heard first
            self._store(network, st, k, rec.entry, now, hidden=True)
            st.records[k].forged = forged

    def _replace_older_boot(self, node: str, epoch: int, now: float) -> None:
        """A newer boot of ``node``: its older entries and attachments are void."""
        for network in list(self._nets):
            self._hide_owner(network, node, epoch - 1, now)
        for network in self._nets_of(node):
            recs = self._attach[network]
            att = recs[node]
            if att.epoch < epoch:
                self._let_go_attachment(att)
                del recs[node]
                self._att_nums[network].remove(att.num)
                self._refresh_peer(network, node)

    # -- attachments -----------------------------------------------------------------

    def _announce(self, network: str, leaving: bool, now: float) -> None:
        self._net_clock += 1
        att = NetworkAttachment(
            node=self.name,
            network=network,
            ltime=self._net_clock,
            leaving=leaving,
            epoch=self.epoch,
            entry_clock=self._clock,
        )
        recs = self._attachments_of(network)
        self._put_attachment(recs, recs.get(self.name), att)
        self._queue_attachment(att, now)

    def _merge_attachment(self, a: NetworkAttachment, now: float) -> bool:
        if a.ltime > self._net_clock:
            self._net_clock = a.ltime
        if a.node == self.name or a.epoch < self._epochs.get(a.node, 0):
            return False  # we know our own state; older boots are void
        recs = self._attach.get(a.network)
        if recs is None:
            recs = self._attachments_of(a.network)
        cur = recs.get(a.node)
        if cur is not None and (a.epoch, a.ltime) <= (cur.epoch, cur.ltime):
            return False
        self._put_attachment(recs, cur, a)
        self._set_peer(a.network, a.node, self._peer_wanted(a))
        if a.leaving:
            # Without local tombstones (NetworkDB before moby#50342) the hidden records
            # stand for deletes at their own Lamport time.
            forged = not self.config.local_tombstones
            self._hide_owner(a.network, a.node, a.epoch, now, forged, a)
        return True

    def _put_attachment(
        self,
        recs: dict[str, NetworkAttachment],
        old: NetworkAttachment | None,
        a: NetworkAttachment,
    ) -> None:
        """Hold ``a`` in place of ``old`` (None: a node new to the network)."""
        nums = self._att_nums[a.network]
        if old is not None:
            self._let_go_attachment(old)
            nums[nums.index(old.num)] = a.num
        else:
            nums.append(a.num)
        _hold(self._held_atts, a)
        recs[a.node] = a
        self._atts += 1
        self._att_bytes += record_size(a)

    def _attachments_of(self, network: str) -> dict[str, NetworkAttachment]:
        """The attachment map of ``network``, made (with its numbers) if new."""
        recs = self._attach.get(network)
        if recs is None:
            recs = self._attach[network] = {}
            self._att_nums[network] = array("I")
        return recs

    def _let_go_attachment(self, a: NetworkAttachment) -> None:
        """``a`` is no longer held (the caller removes or replaces it in its map)."""
        _release(self._held_atts, a)
        self._atts -= 1
        self._att_bytes -= record_size(a)

    def _nets_of(self, node: str) -> list[str]:
        """The networks ``node`` has an attachment record on (joined or left), in the
        order this node first heard of each network.

        A scan of the few networks rather than a per-peer map kept on every stored
        attachment: that map cost a list slot per (node, peer) pair and a look-up per
        accepted attachment, for the membership changes that read it."""
        return [n for n, recs in self._attach.items() if node in recs]

    def _refresh_peer(self, network: str, node: str) -> None:
        """Recompute whether ``node`` is a gossip peer on ``network``."""
        if node == self.name:
            return
        att = self._attach.get(network, {}).get(node)
        self._set_peer(network, node, att is not None and self._peer_wanted(att))

    def _peer_wanted(self, att: NetworkAttachment) -> bool:
        """Whether the node of ``att``, its latest attachment record held here, is a
        gossip peer on that network: attached (not leaving) and alive."""
        return not att.leaving and att.node in self._addr

    def _set_peer(self, network: str, node: str, want: bool) -> None:
        """Make ``node`` (not this node) a gossip peer on ``network`` or not."""
        ps = self._peers.get(network)
        if want:
            if ps is None:
                ps = self._peers[network] = _NodeSet()
            if ps.add(node) and network in self._pending:
                del self._pending[network]  # the join sync waited for a first peer
                self._send_bulk(node, [network])
        elif ps is not None:
            ps.discard(node)

    # -- gossip and anti-entropy -----------------------------------------------------

    def _enqueue(self, network: str, st: _Network, e: Entry, now: float) -> None:
        if st.queue is None:
            return
        size = record_size(e)
        if size + self._overhead(network) > self.config.udp_buffer_size:
            return  # too big for gossip: bulk sync carries it
        st.queue.queue(e, size)
        self._dirty[network] = None
        self._roll_gossip(now)

    def _queue_attachment(self, a: NetworkAttachment, now: float) -> None:
        self._net_queue.queue(a)
        self._roll_gossip(now)

    def _overhead(self, network: str) -> int:
        """Bytes of a table gossip message on ``network`` beyond its records (at most)."""
        o = self._overheads.get(network)
        if o is None:
            o = len(encode(TableGossip(source=self.name, network=network))) + _HEADER_GROWTH
            self._overheads[network] = o
        return o

    def _gossip_round(self) -> None:
        cfg = self.config
        for network in list(self._dirty):
            st = self._nets.get(network)
            q = st.queue if st is not None else None
            peers = self._peers.get(network)
            if q is None or not len(q) or (not peers and network in self._draining):
                del self._dirty[network]
                if st is not None and network in self._draining:
                    self._draining.discard(network)
                    st.queue = None
                continue
            if not peers:
                continue  # keep the news until someone joins
            overhead = self._overhead(network)
            items = q.get(len(peers) + 1, overhead, cfg.udp_buffer_size)
            if not items:
                continue
            msg = TableGossip(source=self.name, network=network, entries=tuple(items))
            object.__setattr__(msg, "nums", _taken_numbers(q))
            # Its length, known without encoding: the records' sizes were queued with them.
            empty = overhead - _HEADER_GROWTH
            size = records_message_size(empty, len(items), q.taken_size)
            for node in peers.sample(self.rng, cfg.gossip_nodes):
                self._sends.append(Send(self._addr[node], msg, False, size))
        if len(self._net_queue) and self._alive:
            # Attachments ride memberlist's gossip in NetworkDB (network events through
            # the delegate's GetBroadcasts), and memberlist fills each target's datagram
            # from the queue on its own: every copy counts as one transmission. Table
            # gossip (above) takes once per network and sends that to every target.
            n = len(self._alive) + 1
            nq = self._net_queue
            for node in self._alive.sample(self.rng, cfg.gossip_nodes):
                items = nq.get(n, self._net_overhead, cfg.udp_buffer_size)
                if not items:
                    break
                nmsg = NetworkGossip(source=self.name, attachments=tuple(items))
                object.__setattr__(nmsg, "nums", _taken_numbers(nq))
                size = records_message_size(self._net_empty, len(items), nq.taken_size)
                self._sends.append(Send(self._addr[node], nmsg, False, size))
        self._recovery_sync()

    def _recovery_sync(self) -> None:
        """At most one bulk sync per round with a node back from a false alarm.

        Its hidden entries would otherwise wait for a periodic bulk sync, and so would
        whatever either side changed while they could not reach each other: attachments
        and entries that epidemic gossip could not carry across (a network joined while
        the other side was held dead is gossiped only to nodes held alive). One random
        node per round, so a whole partition coming back does not cause a sync storm.
        """
        rec = self._recovered
        while len(rec):
            node = rec.choice(self.rng)
            rec.discard(node)
            if node not in self._addr:
                continue
            shared = [n for n in self._attached if node in self._peers.get(n, ())]
            self._send_bulk(node, shared)
            return

    def _bulk_round(self) -> None:
        """One random peer per network; one message covers all networks shared with it."""
        covered: set[str] = set()
        for network in list(self._attached):
            if network in covered:
                continue
            peers = self._peers.get(network)
            if not peers:
                if network in self._pending:
                    self._discover(network)
                continue
            node = peers.choice(self.rng)
            shared = [n for n in self._attached if node in self._peers.get(n, ())]
            covered.update(shared)
            self._send_bulk(node, shared)

    def _discover(self, network: str) -> None:
        """No known peer on a network we joined: ask any member for its attachments."""
        if self._alive:
            self._send_bulk(self._alive.choice(self.rng), [network])

    def _send_bulk(self, node: str, networks: list[str], reply: bool = False) -> None:
        self._sends.append(self._bulk_send(self._addr[node], networks, reply))

    def _bulk_send(self, dst: str, networks: list[str], reply: bool) -> Send:
        """A bulk sync to ``dst``, stating its length (see :meth:`_bulk_sized`)."""
        msg, size = self._bulk_sized(networks, reply)
        return Send(dst, msg, True, size)

    def _bulk_sized(self, networks: list[str], reply: bool) -> tuple[BulkSync, int]:
        """A bulk sync and its encoded length.

        A bulk sync carries every attachment and entry this node holds (thousands at
        scale); summing their sizes for every one sent took about 6% of a 10,000-node
        run late in its burst. The sums are kept instead, as records are stored and let
        go (``_atts``, ``_att_bytes``, ``_Network.shown``): the length is the empty
        message's plus each record field's, as :func:`records_message_size` adds them.
        """
        msg = self._bulk_msg(networks, reply)
        nets = [st for n in networks if (st := self._nets.get(n)) is not None]
        shown = sum(st.shown for st in nets)
        empty = encoded_size(BulkSync(source=self.name, reply=reply, networks=tuple(networks)))
        size = records_message_size(empty, self._atts, self._att_bytes)
        size = records_message_size(size, shown, sum(st.shown_bytes for st in nets))
        return msg, size

    def _bulk_msg(self, networks: list[str], reply: bool) -> BulkSync:
        atts = [a for recs in self._attach.values() for a in recs.values()]
        nets = [st for n in networks if (st := self._nets.get(n)) is not None]
        entries = [
            r.entry
            for st in nets
            for r in st.records.values()
            if not r.hidden  # hidden records are our conclusion, not the owner's word
        ]
        # The records' numbers, kept beside them (``_att_nums``, ``_Network.nums``), for
        # the receiver's held check; entries' only when none is hidden (the usual case),
        # hidden records' numbers being kept too.
        att_nums = array("I")
        for nums in self._att_nums.values():
            att_nums += nums
        entry_nums: array | None = array("I")
        for st in nets:
            if st.shown != len(st.records):
                entry_nums = None
                break
            entry_nums += st.nums  # type: ignore[operator]
        msg = BulkSync(
            source=self.name,
            reply=reply,
            networks=tuple(networks),
            attachments=tuple(atts),
            entries=tuple(entries),
        )
        # Every record just put in is one this node holds, so marked in its held bytes.
        object.__setattr__(msg, "att_marks", bytes(self._held_atts))
        object.__setattr__(msg, "entry_marks", bytes(self._held_entries))
        object.__setattr__(msg, "att_nums", att_nums)
        object.__setattr__(msg, "entry_nums", entry_nums)
        return msg

    def _on_table_gossip(self, msg: TableGossip, now: float) -> bool:
        network = msg.network
        if type(network) is not str or network not in self._attached:
            return False  # not ours: never store another network's entries
        st = self._nets[network]
        records = st.records
        entries = _seq(msg.entries)
        drop_unknown_deletes = not self.config.unknown_tombstones
        # Fast path: the very records we already hold (in the simulator, entries are
        # shared immutable objects), so nothing to validate or merge.
        first = self._first_not_held(network, records, entries, msg.nums)
        if first == len(entries):
            return False
        held = self._held_entries
        for e in entries[first:]:  # those before ``first`` are held, nothing changed since
            if _holds_now(held, records, network, e):
                continue
            if not _entry_ok(e) or e.network != network:
                self.dropped += 1
            elif drop_unknown_deletes and e.deleted and (e.table, e.key) not in st.records:
                # NetworkDB: an async delete of an entry it never held is ignored. Still
                # reported (as when it is stored), so measurements see that it arrived.
                self._events.append(EntryEvent(_TOMBSTONE, network, e.table, e.key, e.owner, {}))
            elif self._merge(network, st, e, now):
                self._enqueue(network, st, e, now)
        return True

    def _on_bulk_sync(self, src: str, msg: BulkSync, now: float) -> None:
        attach = self._attach
        held_atts = self._held_atts
        atts: Any
        nums: Any
        entries: Any
        if _covers(held_atts, msg.att_marks):
            atts, nums = (), None
        else:
            atts, nums = _seq(msg.attachments), msg.att_nums
        for a in self._attachments_not_held(atts, nums):
            if _holds_attachment_now(held_atts, attach, a):
                continue  # the same record twice in one message: merged already
            if _attachment_ok(a):
                self._merge_attachment(a, now)  # anti-entropy repairs, it does not re-gossip
            else:
                self.dropped += 1
        shared = list(
            dict.fromkeys(n for n in _seq(msg.networks) if type(n) is str and n in self._attached)
        )
        wanted = set(shared)
        nets = self._nets
        limit = self.config.bulk_rebroadcast_limit
        held = self._held_entries
        if _covers(held, msg.entry_marks):
            entries, nums = (), None
        else:
            entries, nums = _seq(msg.entries), msg.entry_nums
        for e in self._entries_not_held(entries, nums):
            network = getattr(e, "network", None)
            st = nets.get(network)  # type: ignore[arg-type]
            if st is not None and _holds_now(held, st.records, network, e):  # type: ignore[arg-type]
                continue  # the very version we hold (twice in this message)
            if not _entry_ok(e):
                self.dropped += 1
            elif e.network in wanted:
                st = nets[e.network]
                known = bool(limit) and e.ref in st.records  # only the rebroadcast asks
                if self._merge(e.network, st, e, now) and limit:
                    self._rebroadcast(e.network, st, e, known, limit, now)
        self._unsynced.difference_update(shared)
        if msg.reply is False:
            dst = self._addr.get(msg.source, src) if type(msg.source) is str else src
            self._sends.append(self._bulk_send(dst, shared, True))  # type: ignore[arg-type]

    def _rebroadcast(
        self, network: str, st: _Network, e: Entry, known: bool, limit: int, now: float
    ) -> None:
        """Gossip on a version first learned from a bulk sync, as NetworkDB does.

        Not while our own join sync is unanswered (what it brings, everyone else has),
        not past ``limit`` queued records, and not a delete of an entry we never held
        (NetworkDB spreads those only young; a tombstone can circle for its whole life).
        """
        if network in self._unsynced or (e.deleted and not known):
            return
        q = st.queue
        if q is not None and len(q) < limit:
            self._enqueue(network, st, e, now)

    # -- held checks -----------------------------------------------------------------
    #
    # "Is this the very record object this node holds?" by the node's held bytes, one
    # per record number: a message's records are looked up in one small array instead
    # of a map of thousands (with N nodes' maps, nearly every lookup missed the CPU
    # cache). The maps, which give the same answer, remain for a malformed record.

    def _first_not_held(
        self,
        network: str,
        records: dict[_Key, _Record],
        entries: tuple | list,
        nums: array | None = None,
    ) -> int:
        """Index of the first of a gossip message's ``entries`` (on ``network``) that
        this node does not hold; ``len(entries)`` when it holds every one. ``nums``:
        their record numbers, given by the sender's queue of ``network`` (so every one
        of them is on it), or None (read them from the records)."""
        held = self._held_entries
        try:
            if nums is not None:
                if all(_holding(held, entries, nums)):
                    return len(entries)
                return list(_holding(held, entries, nums)).index(0)
            if all(_holding(held, entries)) and all(
                map(eq, map(_network_of, entries), itertools.repeat(network))
            ):
                return len(entries)  # the usual case: no list built
            on_net = map(eq, map(_network_of, entries), itertools.repeat(network))
            return list(map(and_, _holding(held, entries), on_net)).index(0)
        except (AttributeError, IndexError):
            return _first_not(_holds, records, entries)

    def _entries_not_held(self, entries: tuple | list, nums: array | None = None) -> list:
        """A bulk sync's ``entries`` less those this node holds (in its own network's
        records, as the per-entry check reads them), in order (``nums``: their record
        numbers, if known). With a malformed record among them, all of them: the
        per-entry check judges each."""
        try:
            return _not_holding(self._held_entries, entries, nums)
        except (AttributeError, IndexError):
            return list(entries)

    def _attachments_not_held(self, atts: tuple | list, nums: array | None = None) -> list:
        """The attachment records of ``atts`` this node does not hold, in order
        (``nums``: their record numbers, if known)."""
        try:
            return _not_holding(self._held_atts, atts, nums)
        except (AttributeError, IndexError):
            return [a for a in atts if not _holds_attachment(self._attach, a)]

    # -- helpers ---------------------------------------------------------------------

    def _attached_state(self, network: str) -> _Network:
        _check_names(network)
        if network not in self._attached:
            raise NotAttachedError(f"{self.name} is not attached to network {network!r}")
        return self._nets[network]

    def _owned(self, network: str, st: _Network, table: str, key: str) -> None:
        _check_names(table, key)
        cur = st.records.get((table, key))
        if cur is None or not cur.live:
            raise NoSuchEntryError(f"{network}/{table}/{key} does not exist")
        if cur.entry.owner != self.name:
            raise NotOwnerError(f"{network}/{table}/{key} is owned by {cur.entry.owner}")

    def _roll_gossip(self, now: float) -> None:
        """Idle gossip timers are not reported; move a stale deadline onto its grid."""
        t = self._next_gossip
        if t is not None and t < now:
            iv = self.config.gossip_interval
            self._next_gossip = t + math.ceil((now - t) / iv) * iv

    def _roll_bulk(self, now: float) -> None:
        t = self._next_bulk
        if t is not None and t < now:
            iv = self.config.bulk_sync_interval
            self._next_bulk = t + math.ceil((now - t) / iv) * iv


def _before_leave(e: Entry, leave: NetworkAttachment, clock: bool) -> bool:
    """Whether ``leave`` (an attachment with ``leaving`` set) covers ``e``, an entry of
    the same owner and network: of an earlier boot, or of the same boot and, with
    ``clock`` (the ``leave_clock`` extension), written no later than the leave. The
    owner's entry clock only grows, so an entry above the leave's ``entry_clock`` was
    written after it: the owner has rejoined, and its rejoin has not reached us yet."""
    if e.owner_epoch != leave.epoch:
        return e.owner_epoch < leave.epoch
    return not clock or e.ltime <= leave.entry_clock


def _after(deadline: float, interval: float, now: float) -> float:
    """The next deadline on the grid, skipping rounds the driver was too late for."""
    nxt = deadline + interval
    if nxt <= now:
        nxt = deadline + (math.floor((now - deadline) / interval) + 1) * interval
    return nxt
