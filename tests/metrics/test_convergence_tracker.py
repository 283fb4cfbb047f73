"""ConvergenceTracker semantics, by hand and against an offline reference."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overlaysim.metrics.convergence import ConvergenceTracker

HOSTS = ["a", "b", "c", "d"]


def test_converges_when_last_target_sees_it():
    tr = ConvergenceTracker()
    tr.commit(1.0, "a", "n1", "k", "add", HOSTS)
    tr.seen(1.5, "b", "n1", "k", "add")
    tr.seen(2.0, "d", "n1", "k", "add")
    assert tr.pending == 1
    tr.seen(3.25, "c", "n1", "k", "add")
    assert tr.pending == 0
    (row,) = tr.finish(10.0)
    assert row["status"] == "converged"
    assert row["converged_t"] == 3.25
    assert row["latency_s"] == pytest.approx(2.25)
    assert row["targets"] == 4
    assert (row["owner"], row["network"], row["key"], row["op"]) == ("a", "n1", "k", "add")


def test_owner_sees_its_own_commit_at_once():
    tr = ConvergenceTracker()
    tr.commit(2.0, "a", "n1", "k", "add", ["a"])
    tr.commit(3.0, "a", "n1", "k2", "add", ["a", "b"])
    tr.seen(3.5, "b", "n1", "k2", "add")
    rows = tr.finish(5.0)
    assert [r["latency_s"] for r in rows] == [0.0, 0.5]
    assert all(r["status"] == "converged" for r in rows)


def test_seen_is_idempotent_and_ignores_non_targets_other_ops_and_unknown_keys():
    tr = ConvergenceTracker()
    tr.commit(0.0, "a", "n1", "k", "add", ["a", "b", "c"])
    tr.seen(0.1, "b", "n1", "k", "add")
    tr.seen(0.2, "b", "n1", "k", "add")  # again: still waiting for c
    tr.seen(0.3, "z", "n1", "k", "add")  # not a target
    tr.seen(0.4, "c", "n1", "k", "delete")  # other op
    tr.seen(0.5, "c", "n2", "k", "add")  # other network
    tr.seen(0.6, "c", "n1", "other", "add")  # nothing pending
    assert tr.pending == 1
    tr.seen(0.7, "c", "n1", "k", "add")
    (row,) = tr.finish(1.0)
    assert row["converged_t"] == 0.7


def test_node_gone_converges_at_last_other_seen():
    tr = ConvergenceTracker()
    tr.commit(1.0, "a", "n1", "k", "add", HOSTS)
    tr.seen(2.0, "b", "n1", "k", "add")
    tr.seen(2.5, "c", "n1", "k", "add")
    tr.node_gone(7.0, "d")  # d crashed before it ever saw the entry
    (row,) = tr.finish(10.0)
    assert row["status"] == "converged"
    assert row["converged_t"] == 2.5
    assert row["latency_s"] == 1.5


def test_node_gone_from_one_network_only():
    tr = ConvergenceTracker()
    tr.commit(1.0, "a", "n1", "k", "add", ["a", "b"])
    tr.commit(1.0, "a", "n2", "k", "add", ["a", "b"])
    tr.node_gone(2.0, "b", network="n2")  # b detached from n2 only
    assert tr.pending == 1
    tr.seen(3.0, "b", "n1", "k", "add")
    r1, r2 = tr.finish(5.0)
    assert (r1["network"], r1["converged_t"]) == ("n1", 3.0)
    assert (r2["network"], r2["converged_t"], r2["latency_s"]) == ("n2", 1.0, 0.0)


def test_node_gone_of_a_non_waiting_node_changes_nothing():
    tr = ConvergenceTracker()
    tr.commit(1.0, "a", "n1", "k", "add", ["a", "b", "c"])
    tr.seen(2.0, "b", "n1", "k", "add")
    tr.node_gone(3.0, "b")  # already saw it
    tr.node_gone(3.0, "zz")
    assert tr.pending == 1
    tr.seen(4.0, "c", "n1", "k", "add")
    (row,) = tr.finish(10.0)
    assert row["converged_t"] == 4.0


def test_new_commit_supersedes_pending_one_on_same_key():
    tr = ConvergenceTracker()
    tr.commit(1.0, "a", "n1", "k", "add", HOSTS)
    tr.seen(1.5, "b", "n1", "k", "add")
    tr.commit(2.0, "a", "n1", "k", "delete", HOSTS)
    tr.seen(2.5, "c", "n1", "k", "add")  # late add: belongs to nothing now
    for h in ("b", "c", "d"):
        tr.seen(3.0, h, "n1", "k", "delete")
    first, second = tr.finish(4.0)
    assert first["status"] == "superseded"
    assert first["converged_t"] is None and first["latency_s"] is None
    assert second["status"] == "converged" and second["latency_s"] == 1.0


def test_converged_commit_is_not_superseded_later():
    tr = ConvergenceTracker()
    tr.commit(1.0, "a", "n1", "k", "add", ["a", "b"])
    tr.seen(1.2, "b", "n1", "k", "add")
    tr.commit(5.0, "a", "n1", "k", "delete", ["a", "b"])
    first, second = tr.finish(6.0)
    assert first["status"] == "converged"
    assert second["status"] == "unconverged"


def test_unconverged_at_finish_and_rows_in_commit_order():
    tr = ConvergenceTracker()
    tr.commit(1.0, "a", "n1", "k1", "add", ["a", "b"])
    tr.commit(2.0, "b", "n1", "k2", "add", ["a", "b"])
    tr.seen(3.0, "a", "n1", "k2", "add")
    rows = tr.finish(9.0)
    assert [r["key"] for r in rows] == ["k1", "k2"]
    assert [r["status"] for r in rows] == ["unconverged", "converged"]
    assert rows[0]["converged_t"] is None


def test_finish_closes_the_tracker():
    tr = ConvergenceTracker()
    tr.finish(1.0)
    with pytest.raises(RuntimeError):
        tr.commit(2.0, "a", "n", "k", "add", ["a"])
    with pytest.raises(RuntimeError):
        tr.finish(2.0)


# --- property: the online tracker agrees with an offline computation ------------------

KEYS = ["k1", "k2"]


@st.composite
def scripts(draw):
    """A time-ordered list of (t, action, ...) with distinct times."""
    n = draw(st.integers(1, 40))
    steps = []
    for i in range(n):
        t = float(i + 1)
        kind = draw(st.sampled_from(["commit", "seen", "seen", "seen", "gone"]))
        if kind == "commit":
            targets = draw(st.sets(st.sampled_from(HOSTS), min_size=1))
            owner = draw(st.sampled_from(sorted(targets)))
            op = draw(st.sampled_from(["add", "delete"]))
            steps.append((t, "commit", owner, draw(st.sampled_from(KEYS)), op, targets))
        elif kind == "seen":
            node = draw(st.sampled_from(HOSTS))
            op = draw(st.sampled_from(["add", "delete"]))
            steps.append((t, "seen", node, draw(st.sampled_from(KEYS)), op))
        else:
            steps.append((t, "gone", draw(st.sampled_from(HOSTS))))
    return steps


def reference(steps, t_end):
    """For each commit, scan forward: when does every target either see it or leave?"""
    rows = []
    for i, s in enumerate(steps):
        if s[1] != "commit":
            continue
        t0, _, owner, key, op, targets = s
        waiting = set(targets) - {owner}
        last = t0
        status, conv = "unconverged", None
        if not waiting:
            status, conv = "converged", t0
        else:
            for later in steps[i + 1 :]:
                if later[1] == "commit" and later[3] == key:
                    status = "superseded"
                    break
                if later[1] == "seen" and later[3] == key and later[4] == op:
                    if later[2] in waiting:
                        waiting.discard(later[2])
                        last = later[0]
                elif later[1] == "gone":
                    waiting.discard(later[2])
                if not waiting:
                    status, conv = "converged", last
                    break
        rows.append((t0, key, op, status, conv))
    return rows


@settings(max_examples=200, deadline=None)
@given(scripts())
def test_tracker_matches_offline_reference(steps):
    tr = ConvergenceTracker()
    for s in steps:
        if s[1] == "commit":
            tr.commit(s[0], s[2], "n", s[3], s[4], s[5])
        elif s[1] == "seen":
            tr.seen(s[0], s[2], "n", s[3], s[4])
        else:
            tr.node_gone(s[0], s[2])
    t_end = steps[-1][0] + 1
    rows = tr.finish(t_end)
    got = [(r["t_commit"], r["key"], r["op"], r["status"], r["converged_t"]) for r in rows]
    assert got == reference(steps, t_end)
    for r in rows:
        if r["converged_t"] is None:
            assert r["latency_s"] is None
        else:
            assert math.isclose(r["latency_s"], r["converged_t"] - r["t_commit"])


# --- targets: a host attached at the commit's instant is one ---------------------------


def test_a_host_attached_at_the_commits_instant_becomes_a_target():
    tr = ConvergenceTracker()
    tr.commit(0.0, "a", "n1", "k", "add", ["a"])  # converged at once: only its owner...
    tr.attached(0.0, "b", "n1")  # ...until b comes onto n1 in the same instant
    assert tr.pending == 1
    tr.attached(0.0, "a", "n1")  # its owner is no new target
    tr.attached(0.0, "c", "n2")  # another network
    tr.seen(0.2, "b", "n1", "k", "add")
    tr.attached(0.5, "d", "n1")  # a later instant: not a target of the t=0 commit
    assert tr.pending == 0
    (row,) = tr.finish(1.0)
    assert (row["targets"], row["status"], row["converged_t"]) == (2, "converged", 0.2)


def test_an_attach_at_the_instant_joins_pending_commits_not_earlier_or_superseded_ones():
    tr = ConvergenceTracker()
    tr.commit(1.0, "a", "n1", "early", "add", ["a", "b"])
    tr.commit(2.0, "a", "n1", "k", "add", ["a", "b"])
    tr.commit(2.0, "b", "n1", "k", "delete", ["a", "b"])  # supersedes the add
    tr.attached(2.0, "c", "n1")
    tr.seen(2.1, "b", "n1", "early", "add")
    tr.seen(2.2, "a", "n1", "k", "delete")
    assert tr.pending == 1  # the delete waits for c too
    tr.seen(2.3, "c", "n1", "k", "delete")
    rows = tr.finish(3.0)
    assert [(r["key"], r["op"], r["targets"], r["status"]) for r in rows] == [
        ("early", "add", 2, "converged"),
        ("k", "add", 2, "superseded"),
        ("k", "delete", 3, "converged"),
    ]
    assert rows[0]["converged_t"] == 2.1 and rows[2]["converged_t"] == 2.3


# --- property: hosts attached at a commit's instant, against the rule applied eagerly ---


class _EagerTracker:
    """The tracker's rules as plain sets, each attach applied to the instant's commits
    at once (the definition the tracker's batched, lazy application must match)."""

    def __init__(self) -> None:
        self.all: list[dict] = []
        self.pending: dict[tuple[str, str], dict] = {}
        self.instant: float | None = None
        self.at_instant: dict[str, dict[str, dict]] = {}

    def _close(self, rec: dict, status: str, conv: float | None = None) -> None:
        rec["status"], rec["conv"], rec["waiting"] = status, conv, set()

    def commit(self, t, owner, network, key, op, targets):  # noqa: ANN001, ANN201
        old = self.pending.pop((network, key), None)
        if old is not None:
            self._close(old, "superseded")
        rec = {"t": t, "owner": owner, "network": network, "key": key, "op": op,
               "targets": len(set(targets)), "waiting": set(targets) - {owner},
               "last": t, "status": None, "conv": None}  # fmt: skip
        self.all.append(rec)
        if t != self.instant:
            self.instant, self.at_instant = t, {}
        self.at_instant.setdefault(network, {})[key] = rec
        if rec["waiting"]:
            self.pending[(network, key)] = rec
        else:
            self._close(rec, "converged", t)

    def attached(self, t, node, network):  # noqa: ANN001, ANN201
        if t != self.instant:
            return
        for rec in self.at_instant.get(network, {}).values():
            if node == rec["owner"] or node in rec["waiting"] or rec["status"] == "superseded":
                continue
            rec["targets"] += 1
            rec["waiting"].add(node)
            if rec["status"] == "converged":
                rec["status"], rec["conv"] = None, None
                self.pending[(network, rec["key"])] = rec

    def seen(self, t, node, network, key, op):  # noqa: ANN001, ANN201
        rec = self.pending.get((network, key))
        if rec is None or rec["op"] != op or node not in rec["waiting"]:
            return
        rec["waiting"].discard(node)
        rec["last"] = t
        if not rec["waiting"]:
            del self.pending[(network, key)]
            self._close(rec, "converged", t)

    def node_gone(self, t, node, network=None):  # noqa: ANN001, ANN201
        done = []
        for k, rec in self.pending.items():
            if node in rec["waiting"] and (network is None or k[0] == network):
                rec["waiting"].discard(node)
                if not rec["waiting"]:
                    done.append(k)
        for k in done:
            rec = self.pending.pop(k)
            self._close(rec, "converged", rec["last"])

    def finish(self) -> list[tuple]:
        for rec in self.pending.values():
            self._close(rec, "unconverged")
        return [(r["t"], r["owner"], r["network"], r["key"], r["op"], r["targets"],
                 r["status"], r["conv"]) for r in self.all]  # fmt: skip


@st.composite
def instant_scripts(draw):
    """Steps on two networks, many of them sharing an instant (as a boot burst does)."""
    steps, t = [], 0.0
    for _ in range(draw(st.integers(1, 60))):
        t += draw(st.sampled_from([0.0, 0.0, 0.0, 0.5]))
        kind = draw(st.sampled_from(["attach", "attach", "commit", "commit", "seen", "gone"]))
        net = draw(st.sampled_from(["n1", "n2"]))
        node = draw(st.sampled_from(HOSTS))
        key = draw(st.sampled_from(KEYS))
        op = draw(st.sampled_from(["add", "delete"]))
        if kind == "commit":
            targets = draw(st.sets(st.sampled_from(HOSTS)))
            steps.append((t, "commit", node, net, key, op, sorted(targets)))
        elif kind == "attach":
            steps.append((t, "attach", node, net))
        elif kind == "seen":
            steps.append((t, "seen", node, net, key, op))
        else:
            steps.append((t, "gone", node, draw(st.sampled_from([None, net]))))
    return steps


@settings(max_examples=300, deadline=None)
@given(instant_scripts(), st.booleans(), st.booleans())
def test_hosts_attached_at_an_instant_match_the_eager_rule(steps, as_sets, watch):
    """``watch`` reads ``pending`` after every step (a read applies pending attaches, so
    without it the attaches stay unapplied until another fact comes)."""
    tr, ref = ConvergenceTracker(), _EagerTracker()
    for s in steps:
        if s[1] == "commit":
            t, _, owner, net, key, op, targets = s
            tr.commit(t, owner, net, key, op, set(targets) if as_sets else targets)
            ref.commit(t, owner, net, key, op, targets)
        elif s[1] == "attach":
            tr.attached(s[0], s[2], s[3])
            ref.attached(s[0], s[2], s[3])
        elif s[1] == "seen":
            tr.seen(*s[:1], *s[2:])
            ref.seen(*s[:1], *s[2:])
        else:
            tr.node_gone(s[0], s[2], s[3])
            ref.node_gone(s[0], s[2], s[3])
        if watch:
            assert tr.pending == len(ref.pending)
    rows = tr.finish((steps[-1][0] if steps else 0.0) + 1)
    got = [(r["t_commit"], r["owner"], r["network"], r["key"], r["op"], r["targets"],
            r["status"], r["converged_t"]) for r in rows]  # fmt: skip
    assert got == ref.finish()
