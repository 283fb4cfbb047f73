"""The lab checks on a fake testbed (no root): verdicts, hints and output formats.

The live-testbed behaviour is in ``tests/emu/test_lab_check.py``; here a :class:`FakeProbe`
answers like agents would, so each rule is checked on its own, quickly.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import pytest

from overlaysim.cli import main
from overlaysim.errors import UserError
from overlaysim.lab.check import check_lab, parse_lab, render

HOSTS = ("h1", "h2", "h3")


class FakeProbe:
    def __init__(self) -> None:
        self.hosts = HOSTS
        self.down: set[str] = set()
        self.nets: list[dict[str, Any]] = []
        self.cs: dict[str, tuple[str, dict[str, str]]] = {}
        self.views: dict[str, dict[str, Any]] = {
            h: {o: {"state": "alive"} for o in HOSTS} for h in HOSTS
        }
        self.logs: dict[str, list[dict[str, Any]]] = {h: [{"kind": "start"}] for h in HOSTS}
        self.lost = 0  # pings lost per call

    def answering(self, host: str) -> bool:
        return host not in self.down

    def call(self, host: str, op: str) -> Any:
        if op == "members":
            return self.views[host]
        if op == "tables":
            out: dict[str, dict[str, Any]] = {}
            if any(h == host for h, _ in self.cs.values()):
                for name, (_, ips) in self.cs.items():
                    for net, ip in ips.items():
                        out.setdefault(net, {})[name] = {"value": {"ip": ip}}
            return out
        if op == "kernel":
            return {
                "web": {"neigh": [[ip, "m"] for _, ips in self.cs.values() for ip in ips.values()]}
            }
        raise AssertionError(op)

    def networks(self) -> list[dict[str, Any]]:
        return self.nets

    def containers(self) -> dict[str, tuple[str, dict[str, str]]]:
        return self.cs

    def ping(self, src: str, dst: str, count: int) -> int:
        return max(0, count - self.lost)

    def log(self, host: str) -> list[dict[str, Any]]:
        return self.logs[host]


def _lab1(p: FakeProbe) -> None:
    p.nets = [{"name": "web", "attachable": True, "vni": 4096, "subnet": "10.0.0.0/24"}]
    p.cs = {"c1": ("h1", {"web": "10.0.0.2"}), "c2": ("h2", {"web": "10.0.0.3"})}


def test_lab1_reports_the_first_missing_step_with_its_hint_then_passes() -> None:
    p = FakeProbe()
    res = check_lab(p, 1)
    assert [r.passed for r in res] == [True, False, False, False]
    assert res[1].hint == "network create web --attachable" and res[0].hint == ""
    _lab1(p)
    assert all(r.passed for r in check_lab(p, 1))
    p.cs["c2"] = ("h1", {"web": "10.0.0.3"})  # both on one host: not across hosts
    assert "on the same host" in check_lab(p, 1)[2].detail


def test_a_host_seen_suspect_fails_membership() -> None:
    p = FakeProbe()
    p.views["h1"]["h3"] = {"state": "suspect"}
    first = check_lab(p, 1)[0]
    assert not first.passed and first.detail == "h1 sees h3 suspect"


def test_lab3_needs_a_death_in_the_logs_and_a_second_boot() -> None:
    p = FakeProbe()
    p.nets = [{"name": "web", "attachable": True}]
    p.cs = {f"c{i}": (f"h{i}", {"web": f"10.0.0.{i + 1}"}) for i in (1, 2, 3)}
    assert [r.step for r in check_lab(p, 3) if not r.passed] == [2, 3]
    p.logs["h1"].append({"kind": "member_dead", "subject": "h3"})
    assert [r.step for r in check_lab(p, 3) if not r.passed] == [3]
    p.logs["h3"].append({"kind": "start"})
    assert all(r.passed for r in check_lab(p, 3))
    p.lost = 1  # a lost ping: loss is still on
    step5 = check_lab(p, 3)[4]
    assert not step5.passed and step5.detail == "c1 -> c3: 9/10 replies"


def test_lab4_counts_only_running_hosts_declared_dead() -> None:
    p = FakeProbe()
    p.logs["h1"].append({"kind": "member_dead", "subject": "h3"})
    p.logs["h3"].append({"kind": "start"})  # h3 had crashed: not a partition's trace
    assert not check_lab(p, 4)[1].passed
    p.logs["h2"].append({"kind": "member_dead", "subject": "h1"})
    assert check_lab(p, 4)[1].passed


def test_json_and_csv_carry_every_step() -> None:
    p = FakeProbe()
    _lab1(p)
    res = check_lab(p, 1)
    doc = json.loads(render(res, "json"))
    assert doc["passed"] is True and doc["done"] == 4 and doc["steps"][3]["goal"].startswith("c1")
    rows = list(csv.DictReader(io.StringIO(render(res, "csv"))))
    assert list(rows[0]) == ["lab", "step", "goal", "passed", "detail", "hint"]
    assert [r["step"] for r in rows] == ["1", "2", "3", "4"]
    assert render(res).splitlines()[-1] == "lab 1: 4/4 steps done"


@pytest.mark.parametrize("value", ["0", "7", "two"])
def test_unknown_lab_is_one_line(value: str) -> None:
    with pytest.raises(UserError, match=r"expected one of 1, 2, 3, 4, 5, 6"):
        parse_lab(value)


def test_cli_lab_check_bad_lab_and_stray_options(capsys) -> None:
    assert main(["lab", "check", "9"]) == 2
    assert main(["lab", "topologies/star.yaml", "--json"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "overlaysim: error: check: lab '9': expected one of 1, 2, 3, 4, 5, 6",
        "overlaysim: error: lab: LAB, --json and --csv go with 'overlaysim lab check LAB'",
    ]


class ServicesProbe(FakeProbe):
    """Lab 6's testbed: the manager's services, the agents' status and service logs."""

    def __init__(self) -> None:
        super().__init__()
        self.svcs: list[dict[str, Any]] = []
        self.answered = 0
        self.held: dict[str, dict[str, Any]] = {}  # tables of every host, extra entries

    def services(self) -> list[dict[str, Any]]:
        return self.svcs

    def call(self, host: str, op: str) -> Any:
        if op == "status":
            return {"services": {"dns": {"answered": self.answered}}}
        if op == "tables":
            return {**super().call(host, op), **self.held}
        return super().call(host, op)


def _names(host: str, container: str, service: str = "") -> dict[str, Any]:
    return {"kind": "names", "container": container, "service": service}


def test_lab6_steps_from_networks_services_dns_logs_and_tables() -> None:
    p = ServicesProbe()
    assert not any(r.passed for r in check_lab(p, 6))
    p.nets = [{"name": n, "attachable": True, "vni": 7, "subnet": "s"} for n in ("front", "back")]
    p.cs = {"client": ("h2", {"front": "10.40.0.2"})}
    p.logs["h1"] += [_names("h1", "web.1", "web"), _names("h1", "web.3", "web")]
    p.logs["h2"] += [_names("h2", "web.2", "web")]
    p.answered = 4
    seen = {"key": "web.1", "value": {"service": "web", "mode": "dnsrr", "svc_gen": "2"}}
    p.logs["h3"] += [{"kind": "entry_seen", **seen}]
    for h in HOSTS:
        p.logs[h].append(_names(h, f"ingress.{h}"))
    p.logs["h2"] += [_names("h2", "api.1", "api")]
    p.svcs = [{"name": "api"}]
    p.held = {"ingress": {"api.1": {"value": {"ip": "10.0.0.3", "service": "api"}}}}
    res = check_lab(p, 6)
    assert [r.passed for r in res] == [True] * 6 + [False]
    assert res[6].detail == "still at the manager: api"
    p.svcs = []
    assert check_lab(p, 6)[6].detail == "task entries still held by h1, h2, h3"
    p.held = {}
    res = check_lab(p, 6)
    assert all(r.passed for r in res), render(res)
    assert render(res).splitlines()[-1] == "lab 6: 7/7 steps done"
    # the pieces that fail say what is missing
    p.logs["h3"] = [{"kind": "start"}]  # h3 never ran the mesh, nor saw the dnsrr update
    res = check_lab(p, 6)
    assert res[4].detail == "no task of web ever carried mode dnsrr after an update"
    assert res[5].detail == "no routing mesh ever on h3"
    p.answered = 0
    assert check_lab(p, 6)[3].detail == "the embedded DNS on h2 answered no query yet"
