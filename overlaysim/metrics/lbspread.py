"""``lb_spread``: how evenly a probe client's new connections reached a service's tasks.

A probe opens N new connections to the service VIP and records which task answered
each. The metric is the count per task (tasks that got nothing included, as 0) and the
chi-square goodness-of-fit test of those counts against the uniform distribution: a
p-value near 0 means the balancing is skewed (or a task is unreachable). Anything that
answered but is not a live task is reported separately: it is a stale backend.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["lb_spread", "lb_spread_of"]


def lb_spread(answers: Iterable[str], tasks: Iterable[str]) -> dict[str, object]:
    """Counts per task, chi-square statistic and p-value against uniform, strays.

    ``answers`` names the task that served each connection ("" for a failed one);
    ``tasks`` are the live tasks when the probe ran.
    """
    from scipy.stats import chisquare  # what report/compare.py uses too

    live = sorted(set(tasks))
    got = Counter(answers)
    failed = got.pop("", 0)
    per_task = {t: got.get(t, 0) for t in live}
    strays = {a: n for a, n in sorted(got.items()) if a not in per_task}
    served = sum(per_task.values())
    chi2 = p = None
    if len(live) >= 2 and served > 0:
        res = chisquare(list(per_task.values()))
        chi2, p = float(res.statistic), float(res.pvalue)
    return {
        "connections": served + failed + sum(strays.values()),
        "failed": failed,
        "per_task": per_task,
        "stray": strays,
        "chi2": chi2,
        "p_uniform": p,
    }


def lb_spread_of(rows: Sequence[Mapping[str, Any]]) -> dict[str, object] | None:
    """``lb_spread`` of a results folder's ``lb_probe`` rows (None without connection rows).

    ``task`` rows name the live tasks, ``connection`` rows the answer to each connection;
    the probe's service, client, VIP, port and time are carried along.
    """
    conns = sorted((r for r in rows if r["kind"] == "connection"), key=lambda r: r["seq"])
    if not conns:
        return None
    tasks = [str(r["answer"]) for r in rows if r["kind"] == "task"]
    first = conns[0]
    return {
        "service": str(first["service"]),
        "client": str(first["client"]),
        "vip": str(first["vip"]),
        "port": int(first["port"]),
        "t": float(first["t"]),
        **lb_spread((str(r["answer"]) for r in conns), tasks),
    }
