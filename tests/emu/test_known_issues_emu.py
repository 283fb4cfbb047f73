"""The emulator's known-issues cases, end to end (root, Mininet), and the probes they read."""

from __future__ import annotations

import json
import subprocess
from types import SimpleNamespace

import pytest

from overlaysim.cli import main
from overlaysim.emu.probes import Endpoint, full_size_ping, ip_fragment_counters

SNMP = (
    "Ip: Forwarding DefaultTTL InReceives FragCreates FragOKs FragFails ReasmOKs ReasmFails\n"
    "Ip: 1 64 100 6 3 2 4 0\n"
)


class _FakeUnderlay:
    """Answers ``cmd`` from a table of argv -> stdout (a missing argv fails)."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers
        self.argvs: list[list[str]] = []

    def cmd(self, host, argv, timeout=None):  # type: ignore[no-untyped-def]
        self.argvs.append(list(argv))
        for key, out in self.answers.items():
            if key in " ".join(argv):
                return SimpleNamespace(stdout=out, returncode=0)
        raise subprocess.SubprocessError(f"no answer for {argv}")


def test_fragment_counters_sum_hosts_and_list_the_unreadable() -> None:
    u = _FakeUnderlay({"/proc/net/snmp": SNMP})
    got = ip_fragment_counters(u, ["h1", "h2"])  # type: ignore[arg-type]
    assert got["FragCreates"] == 12 and got["FragFails"] == 4 and got["unread"] == []
    assert got["per_host"]["h1"] == {
        "FragCreates": 6,
        "FragOKs": 3,
        "FragFails": 2,
        "ReasmOKs": 4,
        "ReasmFails": 0,
    }
    assert ip_fragment_counters(_FakeUnderlay({}), ["h1"])["unread"] == ["h1"]  # type: ignore[arg-type]


def test_full_size_ping_uses_the_container_mtu_with_dont_fragment() -> None:
    src = Endpoint(name="a", host="h1", netns="ns-a", ips={"app": "10.0.0.2"})
    dst = Endpoint(name="b", host="h2", netns="ns-b", ips={"app": "10.0.0.3"})
    u = _FakeUnderlay(
        {
            "/sys/class/net/eth0/mtu": "1450\n",
            "ping": "5 packets transmitted, 0 received, 100% packet loss, time 812ms\n",
        }
    )
    row = full_size_ping(u, src, dst)  # type: ignore[arg-type]
    assert row == {"src": "a", "dst": "b", "mtu": 1450, "sent": 5, "received": 0, "reason": ""}
    ping = next(a for a in u.argvs if "ping" in a)
    assert ping[ping.index("-M") + 1] == "do" and ping[ping.index("-s") + 1] == "1422"
    assert full_size_ping(u, src, None)["reason"] == "no shared network"  # type: ignore[arg-type]


@pytest.mark.emu
def test_underlay_mtu_case_black_holes_full_size_frames_under_docker_only(
    emu, tmp_path, capsys
) -> None:
    rc = main(
        ["known-issues", "--backend", "emu", "--only", "underlay-mtu", "--out", str(tmp_path)]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "libnetwork#2661" in out and "(reproduced)" in out and "0 (absent)" in out


def test_probe_echoes_lost_counts_every_round_of_expected_pairs(tmp_path) -> None:
    from overlaysim.known_issues import probe_echoes_lost

    (tmp_path / "reachability.csv").write_text(
        "t,src,dst,network,expected,reachable,sites,rtt_ms\n"
        "1.0,a,b,sec,true,true,s1-s1,0.1\n"
        "2.0,a,b,sec,true,false,s1-s1,\n"
        "3.0,a,b,sec,true,false,s1-s1,\n"
        "3.0,a,c,sec,false,false,s1-s1,\n"  # not expected to reach: not a loss
    )
    assert probe_echoes_lost(tmp_path) == 2


@pytest.mark.emu
def test_esp_seq_exhaustion_case_loses_echoes_under_docker_only(emu, tmp_path, capsys) -> None:
    rc = main(
        [
            "known-issues",
            "--backend",
            "emu",
            "--only",
            "esp-seq-exhaustion",
            "--out",
            str(tmp_path),
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "moby#52005" in out and "(reproduced)" in out and "0 (absent)" in out
    # ours kept the traffic by sealing with the next key and rotating early; docker dropped
    for variant, sealed_next, dropped in (("overlaysim", True, False), ("docker", False, True)):
        logs = (tmp_path / "esp-seq-exhaustion" / variant / "agent-logs").glob("*.jsonl")
        lines = [json.loads(line) for p in logs for line in p.read_text().splitlines()]
        esp = [rec["esp"] for rec in lines if rec["kind"] == "stop" and rec.get("esp")]
        assert esp, variant
        assert (sum(e["tx_next_key"] for e in esp) > 0) is sealed_next, (variant, esp)
        assert (sum(e["drop_rekey"] for e in esp) > 0) is dropped, (variant, esp)
        assert any(rec["kind"] == "rekey_asked" for rec in lines) is sealed_next, variant
