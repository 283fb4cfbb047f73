"""The Mininet underlay: planning, build/start/stop, teardown guarantees, probes, clean.

Planning tests are pure. The rest need root and Mininet; every underlay here gets a
fresh random run tag, so all its root-namespace names are ``osim<tag>*`` and cannot
collide with the data-plane tests (``osimt-*``/``osimb-*``) or a user's Mininet.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import emulation_or_skip, link_names, netns_names, processes_mentioning

from overlaysim.agent import names
from overlaysim.emu import bridgenf, clean, procs, rootns
from overlaysim.emu import record as runrec
from overlaysim.emu.capabilities import Capability, format_report, probe
from overlaysim.emu.net import Underlay, underlay_session
from overlaysim.emu.plan import IFNAMSIZ, UnderlayError, plan_underlay
from overlaysim.emu.setup import EmulationUnavailable, require_emulation
from overlaysim.scenario.topology import Link, Topology

_IGNORES_SIGTERM = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
)


def star(n: int, name: str = "star") -> Topology:
    hosts = tuple(f"h{i}" for i in range(1, n + 1))
    return Topology(
        name=name, hosts=hosts, switches=("s1",), links=tuple(Link(a=h, b="s1") for h in hosts)
    )


def nft_tables() -> set[str]:
    return {name for _family, name in rootns.list_nft_tables()}


def assert_nothing_left(prefix: str, tag: str) -> None:
    assert not [n for n in link_names() if n.startswith(prefix)]
    assert not [n for n in netns_names() if n.startswith(prefix)]
    assert f"{names.PREFIX}_{tag}" not in nft_tables()
    assert not processes_mentioning(f"mininet:{prefix}-")


def ping(u: Underlay, src: str, dst: str, count: int = 2) -> bool:
    argv = ["ping", "-c", str(count), "-i", "0.2", "-W", "1", u.underlay_ip(dst)]
    return u.cmd(src, argv).returncode == 0


# --- planning (pure) ---------------------------------------------------------------------


def test_plan_names_fit_and_carry_the_run_prefix() -> None:
    topo = Topology(
        name="wide",
        hosts=tuple(f"h{i}" for i in range(1, 1201)),
        switches=("s1", "s2"),
        links=(
            *(Link(a=f"h{i}", b="s1" if i <= 1000 else "s2") for i in range(1, 1201)),
            Link(a="s1", b="s2"),
        ),
    )
    plan = plan_underlay(topo, "a3")
    assert plan.prefix == "osima3"
    assert dict(plan.bridges) == {"s1": "osima3s1", "s2": "osima3s2"}
    ports = plan.root_ports()
    assert len(ports) == len(set(ports)) == 1202
    assert all(p.startswith("osima3") and len(p) <= IFNAMSIZ for p in ports)
    assert plan.links[0].b.ifname == "osima3s1-1" and plan.links[0].a.ifname == "eth0"
    assert plan.hosts[0].ip == "172.30.0.1" and plan.hosts[1199].ip == "172.30.4.176"
    assert plan.hosts[0].node == "osima3-h1"
    assert plan.stp is False


def test_plan_detects_switch_loops_and_falls_back_for_long_names() -> None:
    ring = Topology(
        name="ring",
        hosts=("h1",),
        switches=("s1", "s2", "s3"),
        links=(
            Link(a="h1", b="s1"),
            Link(a="s1", b="s2"),
            Link(a="s2", b="s3"),
            Link(a="s3", b="s1"),
        ),
    )
    assert plan_underlay(ring, "b7").stp is True
    many = Topology(
        name="many",
        hosts=tuple(f"h{i}" for i in range(1, 10001)),
        switches=tuple(f"s{i}" for i in range(1, 1001)),
        links=tuple(Link(a=f"h{i}", b="s1000") for i in range(1, 10001)),
    )
    plan = plan_underlay(many, "zz", subnet="10.88.0.0/16")
    names = plan.root_ports()
    assert all(len(n) <= IFNAMSIZ and n.startswith("osimzz") for n in names)
    assert (
        names[0] == "osimzzs1000-1" and names[-1] == "osimzzp7prb"
    )  # link 9999 in base 36, switch side
    assert len(set(names)) == len(names)


@pytest.mark.parametrize(
    ("topo", "message"),
    [
        (Topology(name="t", hosts=("h1", "h1"), switches=(), links=()), "duplicate"),
        (Topology(name="t", hosts=("h1",), switches=(), links=(Link(a="h1", b="x"),)), "unknown"),
        (Topology(name="t", hosts=("h 1",), switches=(), links=()), "must match"),
        (star(300), "do not fit"),
    ],
)
def test_plan_rejects_bad_topologies(topo: Topology, message: str) -> None:
    with pytest.raises(UnderlayError, match=message):
        plan_underlay(topo, "a1", subnet="10.9.9.0/24")


def test_require_emulation_names_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr("shutil.which", lambda tool: None if tool == "mnexec" else "/bin/x")
    with pytest.raises(EmulationUnavailable) as err:
        require_emulation()
    text = str(err.value)
    assert "run as root (sudo)" in text and "apt-get install mininet" in text
    assert "nft is missing" not in text


def test_bridge_netfilter_is_restored_by_the_last_holder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sysctls = tuple(tmp_path / f"nf-{t}" for t in ("arp", "ip", "ip6"))
    for p in sysctls:
        p.write_text("1\n")
    monkeypatch.setattr(bridgenf, "BRIDGE_NF_SYSCTLS", sysctls)
    monkeypatch.setattr(bridgenf, "BRIDGE_NF_STATE", tmp_path / "state" / "bridge-nf.json")
    # Two live runs recording into different folders still share the global setting.
    a = runrec.RunRecord.create(tmp_path / "runs-a", "run-a", "aa")
    b = runrec.RunRecord.create(tmp_path / "runs-b", "run-b", "bb")
    assert bridgenf.hold_bridge_nf(a.path) and bridgenf.hold_bridge_nf(b.path)
    assert [p.read_text() for p in sysctls] == ["0", "0", "0"]
    assert bridgenf.release_bridge_nf(a.path) == []
    assert sysctls[1].read_text() == "0"  # b still runs
    b.discard()  # b died without releasing: the next clean prunes it
    assert len(bridgenf.release_bridge_nf(None)) == 3
    assert [p.read_text() for p in sysctls] == ["1", "1", "1"]
    assert not bridgenf.BRIDGE_NF_STATE.exists()


# --- build, start, stop ------------------------------------------------------------------


@pytest.mark.emu
def test_star_hosts_ping_and_stop_leaves_nothing() -> None:
    emulation_or_skip()
    before = (
        bridgenf.BRIDGE_NF_SYSCTLS[1].read_text()
        if bridgenf.BRIDGE_NF_SYSCTLS[1].exists()
        else None
    )
    u = Underlay(star(3))
    assert u.state == "new" and u.plan is None  # the constructor does nothing
    u.build()
    u.start()
    try:
        plan = u.plan
        assert plan is not None
        for a, b in [("h1", "h2"), ("h2", "h3"), ("h3", "h1")]:
            assert ping(u, a, b), f"{a} cannot ping {b}"
        assert u.interfaces("h1") == ("eth0",)
        out = u.cmd("h2", ["ip", "-j", "addr", "show", "dev", "eth0"]).stdout
        assert json.loads(out)[0]["addr_info"][0]["local"] == u.underlay_ip("h2")
        assert {f"{plan.prefix}s1", f"{plan.prefix}s1-1"} <= link_names()
        assert os.readlink(f"/proc/{u.pid('h1')}/ns/net") != os.readlink("/proc/self/ns/net")
        if before is not None:
            assert bridgenf.BRIDGE_NF_SYSCTLS[1].read_text().strip() == "0"
        qdisc = u.cmd("h1", ["tc", "qdisc", "show", "dev", "eth0"]).stdout
        assert "tbf" in qdisc and "1Gbit" in qdisc  # the topology's 1000 Mbit/s links
        assert (
            "not emulated" in u.mechanisms["link_latency"]
            or "netem" in u.mechanisms["link_latency"]
        )
        with pytest.raises(TypeError):
            u.cmd("h1", "ping -c1 172.30.0.2")  # type: ignore[arg-type]
        desc = u.describe()
        assert desc["hosts"]["h3"] == {"ip": "172.30.0.3", "interfaces": ["eth0"]}
        assert desc["bridges"] == {"s1": f"{plan.prefix}s1"} and "loss" in desc["mechanisms"]
        json.dumps(desc)  # plain data
        record = u.record
        assert record is not None and record.path.exists()
        sleeper = u.popen("h1", ["sleep", "60"])
        stubborn = u.popen("h2", [sys.executable, "-c", _IGNORES_SIGTERM])
        # Started behind the underlay's back (a shell job): stop() finds it by namespace.
        u.host("h3").cmd("sleep 61 &")
        deadline = time.monotonic() + 5
        while not processes_mentioning("sleep 61") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert processes_mentioning("sleep 61")
    finally:
        u.stop()
    assert sleeper.poll() is not None and stubborn.poll() is not None
    assert not processes_mentioning("sleep 61")
    assert not record.path.exists()
    assert_nothing_left(plan.prefix, plan.tag)
    if before is not None:
        assert bridgenf.BRIDGE_NF_SYSCTLS[1].read_text() == before
    u.stop()  # idempotent
    assert u.state == "stopped"


@pytest.mark.emu
def test_hundred_hosts_start_in_seconds() -> None:
    emulation_or_skip()
    t0 = time.perf_counter()
    u = Underlay(star(100, "star100"))
    try:
        u.build()
        u.start()
        up = time.perf_counter() - t0
        assert ping(u, "h1", "h100", count=1)
    finally:
        t1 = time.perf_counter()
        u.stop()
        down = time.perf_counter() - t1
    t = u.timings
    print(
        f"\n100 hosts: up in {up:.2f} s ({t['per_host_ms']:.1f} ms/host; nodes {t['nodes_s']:.2f} s, "
        f"links {t['links_s']:.2f} s, config {t['config_s']:.2f} s, bridges {t['bridges_s']:.2f} s, "
        f"shaping {t['baseline_s']:.2f} s); stopped in {down:.2f} s"
    )
    assert up < 30 and down < 30
    assert u.plan is not None
    assert_nothing_left(u.plan.prefix, u.plan.tag)


@pytest.mark.emu
def test_failed_start_cleans_up(monkeypatch: pytest.MonkeyPatch) -> None:
    emulation_or_skip()
    from overlaysim.emu import net

    def boom(*_args: object, **_kw: object) -> None:
        raise RuntimeError("bridge creation failed")

    monkeypatch.setattr(net, "create_bridge", boom)
    u = Underlay(star(2))
    u.build()
    with pytest.raises(RuntimeError, match="bridge creation failed"):
        u.start()
    assert u.state == "stopped" and u.plan is not None
    assert_nothing_left(u.plan.prefix, u.plan.tag)
    u.stop()


@pytest.mark.emu
def test_failed_build_cleans_up(monkeypatch: pytest.MonkeyPatch) -> None:
    emulation_or_skip()
    calls = {"n": 0}
    original = Underlay._node

    def flaky(self: Underlay, name: str) -> object:
        calls["n"] += 1
        if calls["n"] > 3:  # after the first link and a half: hosts and veths exist
            raise RuntimeError("link creation failed")
        return original(self, name)

    monkeypatch.setattr(Underlay, "_node", flaky)
    u = Underlay(star(3))
    with pytest.raises(RuntimeError, match="link creation failed"):
        u.build()
    assert u.plan is not None
    assert_nothing_left(u.plan.prefix, u.plan.tag)


@pytest.mark.emu
def test_existing_names_are_never_adopted() -> None:
    emulation_or_skip()
    tag = "q9"
    squatter = f"{names.PREFIX}{tag}s1-1"
    subprocess.run(["ip", "link", "add", squatter, "type", "bridge"], check=True)
    try:
        with pytest.raises(UnderlayError, match="already exist"):
            Underlay(star(1), tag=tag).build()
        assert squatter in link_names()  # refused, and left alone
    finally:
        subprocess.run(["ip", "link", "del", squatter], check=False, capture_output=True)


@pytest.mark.emu
@pytest.mark.parametrize("how", ["exception", "ctrl-c", "sigterm"])
def test_session_stops_on_the_way_out(how: str) -> None:
    emulation_or_skip()
    seen: dict[str, str] = {}
    handler_before = signal.getsignal(signal.SIGTERM)
    raised: type[BaseException] = RuntimeError if how == "exception" else KeyboardInterrupt
    with pytest.raises(raised):
        with underlay_session(star(2)) as u:
            assert u.plan is not None
            seen.update(prefix=u.plan.prefix, tag=u.plan.tag)
            assert ping(u, "h1", "h2", count=1)
            if how == "exception":
                raise RuntimeError("scenario failed")
            if how == "ctrl-c":
                raise KeyboardInterrupt
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler interrupts this
    assert_nothing_left(seen["prefix"], seen["tag"])
    assert signal.getsignal(signal.SIGTERM) is handler_before


# --- capabilities ------------------------------------------------------------------------


@pytest.mark.emu
def test_probe_reports_everything_and_leaves_nothing() -> None:
    emulation_or_skip()
    links, spaces, tables = link_names(), netns_names(), nft_tables()
    caps = probe()
    expected = {"root", "mininet", "mnexec", "vxlan", "netem", "tbf", "nft_numgen", "nfqueue"}
    expected |= {"tun", "esp", "kernel_gcm", "iperf3", "tcpdump", "tshark", "openvswitch"}
    expected |= {"ipvs", "nft_nat"}
    assert set(caps) == expected
    assert all(isinstance(c, Capability) and c.detail for c in caps.values())
    # Things the emulator relies on, present on every machine where these tests run.
    assert caps["root"].ok and caps["mnexec"].ok and caps["tbf"].ok and caps["vxlan"].ok
    assert caps["nft_numgen"].ok and caps["tun"].ok and caps["nft_nat"].ok
    assert all(c.disables for c in caps.values() if not c.ok)
    assert link_names() == links
    assert not [n for n in netns_names() - spaces if n.startswith("osim-probe")]
    assert nft_tables() == tables
    table = format_report(caps)
    assert table.row_count == len(caps)


# --- clean -------------------------------------------------------------------------------


def _veth(a: str, b: str) -> None:
    subprocess.run(["ip", "link", "add", a, "type", "veth", "peer", "name", b], check=True)


@pytest.mark.emu
def test_clean_sweeps_prefixed_leftovers_and_nothing_else(tmp_path: Path) -> None:
    emulation_or_skip()
    prefix = "osimzq"  # a private prefix: concurrent runs' objects are out of reach
    keep = "zzqkeep0"  # not prefixed: must survive (no dummy driver here: a bridge)
    subprocess.run(["ip", "link", "add", keep, "type", "bridge"], check=True)
    _veth(f"{prefix}v0", f"{prefix}v1")
    subprocess.run(["ip", "netns", "add", f"{prefix}-leak"], check=True)
    subprocess.run(["nft", "add", "table", "netdev", f"{prefix}_t1"], check=True)
    try:
        would = clean.clean(dry_run=True, state_dir=tmp_path, prefix=prefix, echo=None)
        assert f"{prefix}v0" in link_names()  # dry run changed nothing
        assert any(f"link {prefix}v0" in line for line in would)
        done = clean.clean(state_dir=tmp_path, prefix=prefix, echo=None)
        assert [line.replace("removed ", "") for line in done] == [
            line.replace("would remove ", "") for line in would
        ]
        links = link_names()
        assert not [n for n in links if n.startswith(prefix)]
        assert keep in links
        assert f"{prefix}-leak" not in netns_names()
        assert f"{prefix}_t1" not in nft_tables()
    finally:
        subprocess.run(["ip", "link", "del", keep], check=False, capture_output=True)
        subprocess.run(["ip", "link", "del", f"{prefix}v0"], check=False, capture_output=True)
        subprocess.run(["ip", "netns", "del", f"{prefix}-leak"], check=False, capture_output=True)
        subprocess.run(
            ["nft", "delete", "table", "netdev", f"{prefix}_t1"], check=False, capture_output=True
        )


def _write_record(
    path: Path, owner_pid: int, owner_start: int | None, items: list[runrec.Item]
) -> None:
    path.parent.mkdir(parents=True)
    lines = [
        {
            "op": "run",
            "run_id": path.parent.name,
            "tag": "zr",
            "owner_pid": owner_pid,
            "owner_start": owner_start,
        }
    ]
    lines += [{"op": "add", **i.to_dict()} for i in items]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


@pytest.mark.emu
def test_clean_follows_records_of_dead_runs_only(tmp_path: Path) -> None:
    emulation_or_skip()
    sleeper = subprocess.Popen(["sleep", "60"], start_new_session=True)
    bystander = subprocess.Popen(["sleep", "60"])
    gone = subprocess.Popen(["true"])
    gone.wait()
    _veth("osimzrl0", "osimzrl1")
    _veth("osimzrk0", "osimzrk1")
    dead = [
        runrec.Item(
            kind=runrec.PROCESS,
            pid=sleeper.pid,
            start=procs.proc_start(sleeper.pid),
            argv=("sleep",),
        ),
        # Same PID, wrong start time: a reused PID is never killed.
        runrec.Item(kind=runrec.PROCESS, pid=bystander.pid, start=1, argv=("sleep",)),
        runrec.Item(kind=runrec.LINK, name="osimzrl0"),
    ]
    _write_record(tmp_path / "dead-run" / runrec.RECORD_FILE, gone.pid, 12345, dead)
    # The agents' data-plane record in the same run folder is followed too.
    subprocess.run(["ip", "netns", "add", "osimzr-dp"], check=True)
    created = {"op": "add", "kind": "netns", "name": "osimzr-dp", "netns": None, "ns_ino": None}
    (tmp_path / "dead-run" / "h1.created.jsonl").write_text(json.dumps(created) + "\n")
    live = [runrec.Item(kind=runrec.LINK, name="osimzrk0")]
    _write_record(
        tmp_path / "live-run" / runrec.RECORD_FILE, os.getpid(), procs.proc_start(os.getpid()), live
    )
    try:
        done = clean.clean(state_dir=tmp_path, prefix="osimzr", echo=None)
        assert sleeper.wait(timeout=5) is not None
        assert bystander.poll() is None
        links = link_names()
        assert "osimzrl0" not in links and "osimzrk0" in links
        assert "osimzr-dp" not in netns_names()
        assert any("skipped the prefix sweep" in line for line in done)
        assert not (tmp_path / "dead-run").exists()
        assert (tmp_path / "live-run" / runrec.RECORD_FILE).exists()
    finally:
        for p in (sleeper, bystander):
            p.kill()
            p.wait()
        subprocess.run(["ip", "link", "del", "osimzrl0"], check=False, capture_output=True)
        subprocess.run(["ip", "link", "del", "osimzrk0"], check=False, capture_output=True)
        subprocess.run(["ip", "netns", "del", "osimzr-dp"], check=False, capture_output=True)


_CRASHING_RUN = """
import sys, time
from pathlib import Path
from overlaysim.emu.net import Underlay
from overlaysim.scenario.topology import Link, Topology

topo = Topology(name="crash", hosts=("h1", "h2"), switches=("s1",),
                links=(Link(a="h1", b="s1"), Link(a="h2", b="s1")))
u = Underlay(topo, state_dir=Path(sys.argv[1]))
u.build()
u.start()
u.popen("h1", ["sleep", "62"])
u.impairments.loss(5, link=("s1", "h2"))  # a root-namespace nft table too
print(u.plan.tag, flush=True)
time.sleep(60)
"""


@pytest.mark.emu
def test_clean_finishes_a_killed_run(tmp_path: Path) -> None:
    emulation_or_skip()
    run = subprocess.Popen(
        [sys.executable, "-c", _CRASHING_RUN, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert run.stdout is not None
    tag = run.stdout.readline().strip()
    assert tag, "the run did not start"
    prefix = f"{names.PREFIX}{tag}"
    run.kill()  # SIGKILL: no teardown at all
    run.wait()
    assert f"{prefix}s1" in link_names() and processes_mentioning("sleep 62")
    (folder,) = [p.parent for p in tmp_path.glob("*/underlay.jsonl")]
    for name in ("h1.jsonl", "h1.err", "cluster.key"):  # what agents would have left
        (folder / name).write_text("x")
    done = clean.clean(state_dir=tmp_path, prefix=prefix, echo=None)
    assert any("sleep 62" in line for line in done)
    assert any(line.startswith("removed 3 agent file(s)") for line in done)
    assert_nothing_left(prefix, tag)
    assert not processes_mentioning("sleep 62")
    assert not folder.exists()  # right away: not left for the orphan sweep's minute
