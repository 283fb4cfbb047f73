"""Routing-mesh rules (pure) and task commands stopped with their whole process group."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from overlaysim.agent import ingress
from overlaysim.agent.taskprocs import TaskProcesses


def test_host_rules_dnat_each_published_port_to_its_ingress_vip() -> None:
    text = ingress.render_host_rules(
        "osimab", "172.30.0.2", [[8081, "10.0.0.2", 8080, "api"], [80, "10.0.0.3", 8000, "web"]]
    )
    # the chains stay and their rules are swapped (agent/nftswap.py): no table delete
    assert text.startswith("table ip osimab_ingress {\n") and "delete" not in text
    for chain, hook in (("pre", "prerouting"), ("out", "output")):
        assert f"chain {chain} {{\n\t\ttype nat hook {hook} priority -100;" in text
        assert f"flush chain ip osimab_ingress {chain}\n" in text
    for proto in ("tcp", "udp"):
        rule = f"ip daddr 172.30.0.2 meta l4proto {proto} th dport 8081 dnat ip to 10.0.0.2:8080"
        assert text.count(rule) == 2  # pre and out
    assert text.index("dport 80 ") < text.index("dport 8081 ")  # sorted by port
    empty = ingress.render_host_rules("osimab", "172.30.0.2", [])
    assert "dnat" not in empty and "chain pre" in empty
    with pytest.raises(ValueError):
        ingress.render_host_rules("osimab", "172.30.0.2", [[1, "not-an-ip", 2]])
    assert ingress.host_link("osimab") == "osimab-ig" and len(ingress.host_link("osimabc")) <= 15
    # the table keeps the host's ip_forward as it was before the mesh (default: off)
    assert '\tcomment "ip_forward=0"\n' in text
    on = ingress.render_host_rules("osimab", "172.30.0.2", [], forward_before="1")
    assert '\tcomment "ip_forward=1"\n' in on
    with pytest.raises(ValueError, match="forward_before"):
        ingress.render_host_rules("osimab", "172.30.0.2", [], forward_before="yes")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead too
    return "Z" not in Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0]


def test_stop_ends_the_command_and_its_children(monkeypatch: pytest.MonkeyPatch) -> None:
    # no namespaces here: run the command as it is
    monkeypatch.setattr("overlaysim.agent.taskprocs.exec_argv", lambda ns, name, argv, root: argv)
    procs = TaskProcesses(stderr=subprocess.DEVNULL)
    child = (
        "import subprocess, sys, time; subprocess.Popen(['sleep', '60']); print(1); time.sleep(60)"
    )
    tp = procs.start("web.1", "ns", [sys.executable, "-c", child])
    with pytest.raises(ValueError):
        procs.start("web.1", "ns", ["true"])
    deadline = time.monotonic() + 5
    kids: list[int] = []
    while not kids and time.monotonic() < deadline:
        out = subprocess.run(["pgrep", "-g", str(tp.pid)], capture_output=True, text=True)
        kids = [int(p) for p in out.stdout.split() if int(p) != tp.pid]
        time.sleep(0.05)
    assert kids, "the command's child did not start"
    assert procs.status()["web.1"]["exit"] is None
    status = asyncio.run(procs.stop("web.1", grace=2.0))
    assert status == -15  # SIGTERM
    time.sleep(0.1)
    assert not any(_alive(k) for k in kids)  # the child went with the group
    assert asyncio.run(procs.stop("web.1")) is None and procs.status() == {}
