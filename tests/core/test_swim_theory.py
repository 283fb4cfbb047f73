"""The implementation against the theory in docs/membership.md (many seeded trials).

- Shuffled round-robin probing: gaps between probes of one target by one prober.
- Time from a crash to the first suspicion, from the per-prober wait distribution.
- Time from the first suspicion until every live node declares the crashed one dead,
  within the Lifeguard suspicion bounds.
- Dissemination time of one update against a numerical epidemic model, growing like log N.
"""

from __future__ import annotations

import dataclasses
import math
import random
import statistics

import pytest
from fakenet import FakeNet

from overlaysim.core.config import MembershipConfig, retransmit_limit
from overlaysim.core.events import MemberEventKind as K
from overlaysim.core.membership import Member, Membership, MemberState
from overlaysim.core.suspicion import suspicion_min_timeout
from overlaysim.core.wire import Ack, Gossip, MemberUpdate, Ping, UpdateKind

LAN = MembershipConfig.lan()
NO_PUSH_PULL = dataclasses.replace(LAN, push_pull_interval=1e9)
GOSSIP_ONLY = dataclasses.replace(NO_PUSH_PULL, probe_interval=1e9)


# --- the models -------------------------------------------------------------------------


def wait_slots_distribution(m: int) -> list[float]:
    """P(K = k), k = 1..2m-1: whole probe slots from the crash's slot to the next probe.

    One prober, ``m`` targets, rounds of ``m`` slots, a fresh uniform permutation per
    round. The crash falls in slot ``j`` (uniform); the target sits at slot ``p`` this
    round and ``p'`` next round (independent uniforms): ``K = p - j`` if ``p > j``, else
    ``m - j + p'``.
    """
    p = [0.0] * (2 * m)
    for k in range(1, m):
        p[k] += (m - k) / m**2
    for j in range(m):
        for nxt in range(m):
            p[m - j + nxt] += (j + 1) / m**3
    return p


def expected_first_probe(m: int) -> float:
    """E[min over m independent probers of the wait W = K - f] in probe intervals.

    ``f`` ~ U[0, 1) is the crash's offset in its slot, so P(W > t) is linear on each
    unit interval; the integral of P(W > t)^m is then exact per interval.
    """
    p = wait_slots_distribution(m)
    tail = [0.0] * (2 * m + 1)  # tail[k] = P(K >= k)
    for k in range(2 * m - 1, 0, -1):
        tail[k] = tail[k + 1] + p[k]
    total = 0.0
    for k in range(1, 2 * m):
        a, b = tail[k], tail[k + 1]
        total += (a ** (m + 1) - b ** (m + 1)) / ((m + 1) * (a - b)) if a != b else a**m
    return total


def epidemic_rounds(n: int, fanout: int, retransmit_mult: int, steps: int = 100) -> float:
    """Gossip rounds until fewer than half a node is expected uninformed (mean field).

    Push gossip as implemented: each node ticks every round at its own random phase;
    a node informed at time t sends the update to ``fanout`` random others at each of
    its next ticks until its budget of ``retransmit_limit`` transmissions is spent, so
    its sends spread uniformly over [t + r, t + r + 1) for its r-th round of sends.
    """
    budget = retransmit_limit(retransmit_mult, n)
    per_round = [min(fanout, budget - i) for i in range(0, budget, fanout)]
    dt = 1.0 / steps
    miss = -math.log(1.0 - 1.0 / (n - 1))  # hazard of one transmission for one node
    informed = [1.0]  # newly informed per step; the origin at step 0
    prefix = [0.0, 1.0]  # prefix sums of ``informed``
    uninformed = n - 1.0
    s = 0
    while uninformed >= 0.5:
        s += 1
        sends = 0.0
        for r, count in enumerate(per_round):
            lo, hi = max(s - (r + 1) * steps, 0), max(s - r * steps, 0)
            sends += count * (prefix[hi] - prefix[lo]) * dt
        new = uninformed * (1.0 - math.exp(-miss * sends))
        uninformed -= new
        informed.append(new)
        prefix.append(prefix[-1] + new)
    return s * dt


def classic_rounds(n: int, fanout: int) -> float:
    """Synchronous-round estimate: log_{1+fanout}(n) + ln(n) / fanout."""
    return math.log(n, 1 + fanout) + math.log(n) / fanout


def test_models_are_consistent():
    for m in (1, 2, 7, 15, 63):
        assert sum(wait_slots_distribution(m)) == pytest.approx(1.0)
    assert expected_first_probe(1) == pytest.approx(0.5)  # one target, probed every slot
    for m in (7, 15, 63):
        # The wait density is 1/m per slot near zero, so the first of m probers comes
        # after about m / (m + 1) intervals: the continuous analogue of SWIM's e/(e-1).
        assert expected_first_probe(m) == pytest.approx(m / (m + 1), rel=0.02)
    rounds = [epidemic_rounds(n, 3, 4) for n in (16, 64, 256, 1024)]
    assert rounds == sorted(rounds)
    assert all(r < classic_rounds(n, 3) for r, n in zip(rounds, (16, 64, 256, 1024), strict=True))


# --- harness --------------------------------------------------------------------------


def converged(n: int, cfg: MembershipConfig, seed: int) -> tuple[FakeNet, dict[str, Membership]]:
    """A cluster that starts knowing everyone (no join traffic), on a quiet fake wire."""
    net = FakeNet(seed=seed)
    everyone = [Member(f"n{i}", f"n{i}", 0, MemberState.ALIVE, 0) for i in range(n)]
    nodes = {}
    for i in range(n):
        name = f"n{i}"
        m = Membership(name=name, addr=name, config=cfg, rng=random.Random(f"{seed}/{name}"))
        m.bootstrap(everyone, 0.0, emit=False)
        m.start(0.0)
        nodes[name] = m
        net.add(name, m)
    return net, nodes


# --- probing: gap structure of shuffled round-robin ------------------------------------


def test_round_robin_gaps_match_the_permutation_model():
    """Gaps G between probes of one target: E[G] = m, Var(G) = (m^2 - 1)/6, G <= 2m - 1.

    The mean wait from a random instant to the next probe is E[G^2] / (2 E[G]) =
    m/2 + (m^2 - 1)/(12 m) slots (about 0.58 m) where uniform random targets would give
    m - 1/2 (a geometric gap).
    """
    m = 15
    node = Membership(name="a", addr="a", config=NO_PUSH_PULL, rng=random.Random(7))
    node.bootstrap([Member(f"p{i}", f"p{i}", 0, MemberState.ALIVE) for i in range(m)], 0.0)
    node.start(0.0)
    slot: dict[str, list[int]] = {}
    probes = 0
    while probes < 400 * m:
        t = node.next_timer()
        node.handle_timer(t)
        for s in node.take_sends():
            if isinstance(s.msg, Ping):
                slot.setdefault(s.msg.target, []).append(probes)
                probes += 1
                node.receive(s.dst, Ack(seq=s.msg.seq, source=s.dst), t + 0.001)
    gaps = [b - a for slots in slot.values() for a, b in zip(slots, slots[1:], strict=False)]
    assert min(gaps) >= 1 and max(gaps) <= 2 * m - 1
    assert statistics.mean(gaps) == pytest.approx(m, rel=0.01)
    assert statistics.pvariance(gaps) == pytest.approx((m * m - 1) / 6, rel=0.1)
    residual = sum(g * g for g in gaps) / (2 * sum(gaps))
    assert residual == pytest.approx(m / 2 + (m * m - 1) / (12 * m), rel=0.05)
    assert residual < 0.7 * (m - 0.5)  # clearly not random target selection
    assert node.health_score == 0


# --- failure detection ------------------------------------------------------------------


def crash_trial(n: int, seed: int) -> tuple[float, float, float]:
    """Crash one node at a uniform time; return (crash→first suspicion, first
    suspicion→all live nodes dead, first suspicion→first death)."""
    rng = random.Random(seed)
    net, nodes = converged(n, NO_PUSH_PULL, seed)
    crash_at = 2.0 + rng.random() * (n - 1) * LAN.probe_interval  # one whole round
    victim = f"n{rng.randrange(n)}"
    net.run_until(crash_at)
    net.crash(victim)
    start = len(net.events)

    def all_dead() -> bool:
        return sum(e.item.kind is K.DEAD for e in net.events[start:]) == n - 1

    net.run_until(crash_at + 60.0, stop=all_dead)
    events = net.events[start:]
    assert all_dead() and {e.item.node for e in events} == {victim}  # no false positives
    first = min(e.time for e in events if e.item.kind is K.SUSPECT)
    deaths = [e.time for e in events if e.item.kind is K.DEAD]
    return first - crash_at, max(deaths) - first, min(deaths) - first


def check_detection(n: int, trials: int) -> None:
    results = [crash_trial(n, seed) for seed in range(trials)]
    first = [r[0] for r in results]
    T = LAN.probe_interval
    # A probe fails one interval after it starts: first suspicion = first probe + T.
    expected = (expected_first_probe(n - 1) + 1.0) * T
    tolerance = 4 * statistics.stdev(first) / math.sqrt(trials)
    assert abs(statistics.mean(first) - expected) <= tolerance, (statistics.mean(first), expected)
    assert min(first) >= T - 0.01 and max(first) <= (2 * (n - 1) + 1) * T
    lo = suspicion_min_timeout(LAN.suspicion_mult, n, T)
    hi = LAN.suspicion_max_timeout_mult * lo
    slack = 5 * LAN.gossip_interval  # the Dead still has to spread
    for _, all_dead, first_dead in results:
        assert lo - 1e-9 <= first_dead and all_dead <= hi + slack
    # Lifeguard: independent confirmations pull the typical case down to the minimum.
    assert statistics.median(r[1] for r in results) <= lo + slack


def test_detection_time_matches_the_round_robin_model():
    check_detection(16, 150)


@pytest.mark.slow
@pytest.mark.parametrize("n", [8, 32, 64])
def test_detection_time_matches_the_round_robin_model_more_sizes(n):
    check_detection(n, 300)


# --- dissemination ----------------------------------------------------------------------


def spread_trial(n: int, seed: int) -> tuple[float, int]:
    """Rounds until every node has one fresh update (gossip only), and how many missed."""
    rng = random.Random(seed)
    net, nodes = converged(n, GOSSIP_ONLY, seed)
    t0 = 3.0 + rng.random()  # after the start-up announcements have died out
    net.run_until(t0)
    origin = nodes["n0"]
    accusation = MemberUpdate(kind=UpdateKind.SUSPECT, node="n0", incarnation=0, addr="n0", src="x")
    origin.receive("x", Gossip(source="x", updates=(accusation,)), t0)  # refutes: Alive, inc 1
    net.flush("n0")
    informed = {"n0": t0}

    def watch(now, dst, msg):
        if dst not in informed and nodes[dst].member("n0").incarnation >= 1:
            informed[dst] = now

    net.on_deliver = watch
    net.run_until(t0 + 20.0)
    return (max(informed.values()) - t0) / LAN.gossip_interval, n - len(informed)


def check_dissemination(sizes_trials: dict[int, int]) -> None:
    means, models = [], []
    for n, trials in sizes_trials.items():
        runs = [spread_trial(n, seed) for seed in range(trials)]
        assert sum(missed for _, missed in runs) == 0, n
        mean = statistics.mean(r for r, _ in runs)
        model = epidemic_rounds(n, LAN.gossip_nodes, LAN.retransmit_mult)
        assert abs(mean - model) <= 1.0, (n, mean, model)
        assert mean <= classic_rounds(n, LAN.gossip_nodes) + 1.0, n
        means.append(mean)
        models.append(model)
    # Growth like log N: the slope against ln N matches the model's.
    logs = [math.log(n) for n in sizes_trials]
    slope = statistics.linear_regression(logs, means).slope
    model_slope = statistics.linear_regression(logs, models).slope
    assert slope == pytest.approx(model_slope, rel=0.35)
    assert slope > 0


def test_dissemination_grows_like_log_n_and_follows_the_epidemic_model():
    check_dissemination({16: 12, 32: 10, 64: 8, 128: 6, 256: 4, 512: 3})


@pytest.mark.slow
def test_dissemination_more_trials_up_to_1024():
    check_dissemination({16: 40, 64: 30, 256: 15, 512: 10, 1024: 5})
