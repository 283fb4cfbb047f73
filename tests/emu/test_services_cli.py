"""Service networking end to end, through the Docker-style CLI on a real testbed.

One 3-host testbed (a star, ``local`` timing, published like ``overlaysim up`` so the
``overlaysim service/run/exec`` commands find it) for the module. Each task of service
``web`` runs a tiny TCP server answering with its hostname (``web.<slot>``, from its UTS
namespace); a standalone client container on h2 resolves names through its embedded
DNS (the resolv.conf ``overlaysim exec`` mounts) with dnspython and glibc. Checks the
issue's "Done means": a 3-replica VIP service reached over 30 new TCP connections hits
at least two replicas; ``tasks.web`` lists all three; scale to 1 shows within 5 s; after
``service rm`` the name stops resolving within 5 s; ``dnsrr`` returns task IPs; a name
on a network the client is not on is NXDOMAIN. Afterwards nothing with the run's prefix
may remain (namespaces, links, resolv.conf folders, UTS files, task processes). As root;
about a minute.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import STAR3, emulation_or_skip, link_names, netns_names
from service_probes import knock, server

from overlaysim.agent.resolvconf import NETNS_ETC
from overlaysim.agent.uts import UTS_DIR

pytestmark = pytest.mark.emu

# The task command: answer every connection with this task's hostname.
SERVER = server()

# Run inside the client: resolve through /etc/resolv.conf (the embedded DNS).
PROBE = """\
import json, socket, sys, time
import dns.resolver

def ask(name):
    r = dns.resolver.Resolver()  # reads the resolv.conf 'ip netns exec' mounted
    r.lifetime = 2.0
    try:
        return sorted(a.address for a in r.resolve(name, "A"))
    except dns.resolver.NXDOMAIN:
        return "NXDOMAIN"

cmd, name = sys.argv[1], sys.argv[2]
if cmd == "ask":
    print(json.dumps(ask(name)))
elif cmd == "until":  # poll until the answer has N addresses (or NXDOMAIN for -1)
    want, deadline = int(sys.argv[3]), time.monotonic() + float(sys.argv[4])
    while True:
        got = ask(name)
        done = got == "NXDOMAIN" if want < 0 else got != "NXDOMAIN" and len(got) == want
        if done or time.monotonic() > deadline:
            print(json.dumps(got))
            break
        time.sleep(0.05)
elif cmd == "watch":  # say ready, then report the wall-clock time the answer changed
    want, deadline = int(sys.argv[3]), time.monotonic() + float(sys.argv[4])
    print("ready", flush=True)
    while True:
        got = ask(name)
        done = got == "NXDOMAIN" if want < 0 else got != "NXDOMAIN" and len(got) == want
        if done or time.monotonic() > deadline:
            print(json.dumps({"t": time.time(), "got": got}))
            break
        time.sleep(0.02)
elif cmd == "connect":  # N new TCP connections to name:port; who answered
    seen = {}
    for _ in range(int(sys.argv[3])):
        with socket.create_connection((name, 8080), timeout=3) as s:
            who = s.recv(64).decode()
        seen[who] = seen.get(who, 0) + 1
    print(json.dumps(seen))
"""


def osim(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``overlaysim ARGV`` as a user runs it (a separate process)."""
    res = subprocess.run(_osim_argv(*argv), capture_output=True, text=True, timeout=120)
    if check and res.returncode != 0:
        raise AssertionError(f"overlaysim {' '.join(argv)}: {res.returncode} {res.stderr}")
    return res


LAB: list = []  # the running Lab (for commands in a host's own namespace)


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The testbed with networks ``front`` (client on h2) and ``back``; yields the probe."""
    emulation_or_skip()
    from overlaysim.emu.live import read_live
    from overlaysim.lab.session import lab_session

    d = tmp_path_factory.mktemp("svc")
    (d / "star3.yaml").write_text(STAR3)
    probe = d / "probe.py"
    probe.write_text(PROBE)
    prefix = ""
    with lab_session(d / "star3.yaml", profile="local", publish=True, say=False) as lb:
        prefix = lb.testbed.prefix
        LAB.append(lb)
        if read_live().prefix != prefix:
            pytest.skip("another testbed owns the address book (overlaysim up is running)")
        osim("network", "create", "--attachable", "--subnet", "10.61.0.0/24", "front")
        osim("network", "create", "--attachable", "--subnet", "10.62.0.0/24", "back")
        osim("run", "--name", "client", "--network", "front", "h2")
        # h2 holds a container on "back" too, so its tables know "secret": the NXDOMAIN
        # below is the network rule, not an unknown name
        osim("run", "--name", "other", "--network", "back", "h2")
        osim("run", "--name", "secret", "--network", "back", "h3")
        yield probe
    assert prefix
    assert not [n for n in netns_names() if n.startswith(prefix)]
    assert not [n for n in link_names() if prefix in n]
    assert not [p for p in NETNS_ETC.glob(f"{prefix}*")] if NETNS_ETC.exists() else True
    assert not [p for p in UTS_DIR.glob(f"{prefix}*")] if UTS_DIR.exists() else True
    ps = subprocess.run(["pgrep", "-fa", "SO_REUSEADDR"], capture_output=True, text=True)
    assert "8080" not in ps.stdout, ps.stdout  # no task command survived


def _osim_argv(*argv: str) -> list[str]:
    code = "import sys; from overlaysim.cli import main; sys.exit(main(sys.argv[1:]))"
    return [sys.executable, "-c", code, *argv]


def watched(bed: Path, name: str, want: int, *argv: str) -> tuple[object, float, float]:
    """Run ``overlaysim ARGV`` while the client polls ``name``; (answer, seconds, cmd s).

    The seconds run from just before the command starts until the client's first
    answer with ``want`` addresses (-1: NXDOMAIN), on the wall clock both share.
    """
    cmd = [sys.executable, str(bed), "watch", name, str(want), "15"]
    with subprocess.Popen(
        _osim_argv("exec", "client", "--", *cmd), stdout=subprocess.PIPE, text=True
    ) as watcher:
        assert watcher.stdout is not None
        assert watcher.stdout.readline().strip() == "ready"
        t0 = time.time()
        osim(*argv)
        cmd_s = time.time() - t0
        out = json.loads(watcher.stdout.read().strip().splitlines()[-1])
    return out["got"], out["t"] - t0, cmd_s


def probe(bed: Path, *args: str) -> object:
    res = osim("exec", "client", "--", sys.executable, str(bed), *args)
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_vip_service_dns_scale_and_rm(bed: Path) -> None:
    out = osim(
        "service", "create", "--name", "web", "--replicas", "3", "--network", "front",
        "--", sys.executable, "-c", SERVER,
    ).stdout  # fmt: skip
    task_ips = sorted(line.split()[-1] for line in out.splitlines() if " on h" in line)
    assert len(task_ips) == 3, out
    vip = next(s for s in osim("service", "ls").stdout.splitlines() if s.startswith("web")).split()[
        3
    ]
    # tasks.web lists all three once every host's table has them
    assert probe(bed, "until", "tasks.web", "3", "10") == task_ips
    assert probe(bed, "ask", "web") == [vip]
    ps = osim("service", "ps", "web").stdout
    assert ps.count("running") == 3 and "pid" in ps, ps
    # 30 new TCP connections to the name (the VIP): at least two replicas answer, and
    # every answer is a task's hostname from its own UTS namespace
    seen = probe(bed, "connect", "web", "30")
    assert isinstance(seen, dict) and sum(seen.values()) == 30, seen
    assert len(seen) >= 2 and set(seen) <= {"web.1", "web.2", "web.3"}, seen
    print(f"lb spread over 30 connections: {seen}")

    one, scaled_s, cmd_s = watched(bed, "tasks.web", 1, "service", "scale", "web=1")
    assert isinstance(one, list) and len(one) == 1 and one[0] in task_ips, one
    assert scaled_s < 5.0, f"scale to 1 took {scaled_s:.2f} s to show in DNS"
    assert probe(bed, "connect", "web", "5") == {"web.1": 5}  # the VIP follows at once
    print(f"scale 3 -> 1 in the client's DNS after {scaled_s:.2f} s (the command {cmd_s:.2f} s)")

    gone, rm_s, cmd_s = watched(bed, "web", -1, "service", "rm", "web")
    assert gone == "NXDOMAIN" and rm_s < 5.0, (gone, rm_s)
    assert probe(bed, "ask", "tasks.web") == "NXDOMAIN"
    print(f"service rm: name gone from the client's DNS after {rm_s:.2f} s (command {cmd_s:.2f} s)")


def test_dnsrr_returns_the_task_ips(bed: Path) -> None:
    out = osim(
        "service", "create", "--name", "rr", "--replicas", "2", "--network", "front",
        "--endpoint-mode", "dnsrr",
    ).stdout  # fmt: skip
    task_ips = sorted(line.split()[-1] for line in out.splitlines() if " on h" in line)
    assert "dnsrr" in out and len(task_ips) == 2, out
    assert probe(bed, "until", "rr", "2", "10") == task_ips
    assert probe(bed, "ask", "tasks.rr") == task_ips
    # switching the endpoint mode keeps the name resolving (moby#36988): now one VIP
    osim("service", "update", "--endpoint-mode", "vip", "rr")
    vip = probe(bed, "until", "rr", "1", "10")
    assert isinstance(vip, list) and len(vip) == 1 and vip[0] not in task_ips, vip
    assert len(probe(bed, "ask", "tasks.rr")) == 2
    osim("service", "rm", "rr")


def test_a_name_on_another_network_is_nxdomain(bed: Path) -> None:
    assert probe(bed, "ask", "secret") == "NXDOMAIN"
    assert probe(bed, "ask", "client") != "NXDOMAIN"  # its own network answers


def test_bad_service_input_is_one_line(bed: Path) -> None:
    cases = [
        (("service", "scale", "ghost=2"), "service 'ghost' not found"),
        (("service", "rm", "ghost"), "service 'ghost' not found"),
        (
            ("service", "create", "--name", "x", "--replicas", "-1", "--network", "front"),
            "replicas -1: expected an integer >= 0",
        ),
        (
            ("service", "create", "--name", "x", "--network", "front", "--endpoint-mode", "rr"),
            "endpoint mode 'rr': unknown; expected vip or dnsrr",
        ),
        (("service", "update", "--endpoint-mode", "ipvs", "ghost"), "service 'ghost' not found"),
    ]
    for argv, text in cases:
        res = osim(*argv, check=False)
        assert res.returncode == 2 and text in res.stderr, (argv, res.stderr)
        assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    assert "x" not in osim("service", "ls").stdout.split()


def _knock(host: str, port: int, n: int, ips: list[str]) -> dict[str, dict[str, int]]:
    return knock(LAB[0].underlay, host, port, n, ips)


def test_a_published_port_answers_on_every_host(bed: Path) -> None:
    from overlaysim.emu.live import read_live

    lab = LAB[0]
    out = osim(
        "service", "create", "--name", "pub", "--replicas", "2", "--network", "front",
        "--publish", "8081:8080", "--", sys.executable, "-c", SERVER,
    ).stdout  # fmt: skip
    assert "port 8081 on every host -> task port 8080" in out, out
    ips = [read_live().hosts[h]["underlay_ip"] for h in lab.hosts]
    deadline = time.monotonic() + 15
    while True:  # until every host's mesh and the tasks' servers are up
        seen = _knock("h1", 8081, 1, ips)
        if all(set(v) <= {"pub.1", "pub.2"} for v in seen.values()):
            break
        assert time.monotonic() < deadline, seen
        time.sleep(0.3)
    # from h1 (to itself through the output chain, to h2 and h3 from outside) and from h3
    for src in ("h1", "h3"):
        seen = _knock(src, 8081, 8, ips)
        answered = {who for per_host in seen.values() for who in per_host}
        assert answered == {"pub.1", "pub.2"}, seen  # every answer a task; both used
        assert all(sum(v.values()) == 8 for v in seen.values())
        print(f"routing mesh from {src}: {seen}")
    taken = osim(
        "service", "create", "--name", "pub2", "--network", "front", "--publish", "8081:80",
        check=False,
    )  # fmt: skip
    assert taken.returncode == 2 and taken.stderr.count("\n") == 1, taken.stderr
    assert "published port 8081: already used by service pub" in taken.stderr
    ours = osim("service", "create", "--name", "pub3", "--network", "front", "-p", "7946:80",
                check=False)  # fmt: skip
    assert "published port 7946: used by the agents (gossip)" in ours.stderr, ours.stderr
    osim("service", "rm", "pub")
    for h in lab.hosts:  # the mesh is gone from every host with the last published port
        tables = lab.underlay.cmd(h, ["nft", "list", "tables"]).stdout
        links = lab.underlay.cmd(h, ["ip", "-br", "link"]).stdout
        assert "_ingress" not in tables and "-ig" not in links, (h, tables, links)


def test_lab_check_6_follows_the_lab(bed: Path) -> None:
    """``overlaysim lab check 6`` from another process (the published address book) after
    the lab's steps: the last step fails while a service is still there, then all pass."""
    osim(
        "service", "create", "--name", "web", "--replicas", "3", "--network", "front",
        "--", sys.executable, "-c", SERVER,
    )  # fmt: skip
    assert probe(bed, "until", "tasks.web", "3", "10") != "NXDOMAIN"  # the client's DNS
    osim("service", "update", "--endpoint-mode", "dnsrr", "web")
    osim(
        "service", "create", "--name", "api", "--replicas", "2", "--network", "front",
        "--publish", "8083:8080", "--", sys.executable, "-c", SERVER,
    )  # fmt: skip
    res = osim("lab", "check", "6", "--json", check=False)
    steps = json.loads(res.stdout)["steps"]
    assert res.returncode != 0 and [s["passed"] for s in steps] == [True] * 6 + [False], steps
    assert steps[6]["detail"] == "still at the manager: api, web", steps[6]
    osim("service", "rm", "web", "api")
    deadline = time.monotonic() + 10
    while True:  # the removed tasks' entries leave every host's tables
        res = osim("lab", "check", "6", check=False)
        if res.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    print(res.stdout)
    assert res.returncode == 0, res.stdout
    assert res.stdout.splitlines()[-1] == "lab 6: 7/7 steps done"


def test_rm_and_network_rm_take_several_names_and_name_each_failure() -> None:
    """Like ``docker rm a b``: every name is tried, each removed one printed, each
    failure named on stderr, status 2 if any failed."""
    osim("run", "--name", "tmp1", "--network", "back", "h1")
    osim("run", "--name", "tmp2", "--network", "back", "h3")
    res = osim("rm", "tmp1", "ghost", "tmp2", check=False)
    assert res.returncode == 2, res
    assert res.stdout.split() == ["tmp1", "tmp2"], res.stdout
    assert res.stderr == "overlaysim: error: no such container: ghost\n", res.stderr
    ps = osim("ps").stdout
    assert "tmp1" not in ps and "tmp2" not in ps and "client" in ps, ps
    for name, subnet in (("spare1", "10.63.0.0/24"), ("spare2", "10.64.0.0/24")):
        osim("network", "create", "--subnet", subnet, name)
    res = osim("network", "rm", "spare1", "nosuch", "spare2", "back", check=False)
    assert res.returncode == 2, res
    assert res.stdout.split() == ["spare1", "spare2"], res.stdout
    errors = res.stderr.splitlines()
    assert len(errors) == 2, res.stderr
    assert errors[0] == "overlaysim: error: network nosuch not found", errors
    assert errors[1].startswith("overlaysim: error: network back id "), errors  # in use
    assert "active endpoints: other (" in errors[1], errors
    names = osim("network", "ls").stdout
    assert "spare" not in names and "back" in names, names


def _forwarding(host: str) -> str:
    res = LAB[0].underlay.cmd(host, ["cat", "/proc/sys/net/ipv4/ip_forward"])
    return res.stdout.strip()


def test_the_mesh_comes_back_after_an_agent_crash_and_restart(bed: Path) -> None:
    """Last in the module (it crashes h3, whose containers go). A restarted agent takes
    the published ports from the manager's registry by itself; its killed boot's host
    table is removed and ``ip_forward`` put back; ``service rm`` restores it everywhere."""
    from overlaysim.emu.live import read_live
    from overlaysim.lab.commands import crash, restart

    lab = LAB[0]
    before = {h: _forwarding(h) for h in lab.hosts}
    osim(
        "service", "create", "--name", "pub4", "--replicas", "3", "--network", "front",
        "--publish", "8082:8080", "--", sys.executable, "-c", SERVER,
    )  # fmt: skip
    tasks = {"pub4.1", "pub4.2", "pub4.3"}
    ips = [read_live().hosts[h]["underlay_ip"] for h in lab.hosts]
    h3 = read_live().hosts["h3"]["underlay_ip"]
    deadline = time.monotonic() + 15
    while not all(set(v) <= tasks for v in _knock("h1", 8082, 1, ips).values()):
        assert time.monotonic() < deadline
        time.sleep(0.3)
    assert {h: _forwarding(h) for h in lab.hosts} == dict.fromkeys(lab.hosts, "1")
    print(crash(lab, "h3"))
    print(restart(lab, "h3"))
    # nobody sends h3 the ports again: it must take them from the manager itself
    t0, deadline = time.monotonic(), time.monotonic() + 30
    while True:
        seen = _knock("h1", 8082, 8, [h3])[h3]
        if set(seen) <= tasks:
            break
        assert time.monotonic() < deadline, seen
        time.sleep(0.3)
    print(f"h3:8082 answered by tasks {time.monotonic() - t0:.1f} s after the restart: {seen}")
    assert sum(seen.values()) == 8
    log = lab.testbed.log_path("h3").read_text()
    assert '"kind":"mesh_recovered"' in log.replace(" ", "")  # the killed boot's table
    assert '"kind":"mesh_restored"' in log.replace(" ", "")
    osim("service", "rm", "pub4")
    for h in lab.hosts:  # the mesh is gone, and forwarding is as it was before it
        tables = lab.underlay.cmd(h, ["nft", "list", "tables"]).stdout
        links = lab.underlay.cmd(h, ["ip", "-br", "link"]).stdout
        assert "_ingress" not in tables and "-ig" not in links, (h, tables, links)
    assert {h: _forwarding(h) for h in lab.hosts} == before
    print(f"ip_forward before the mesh and after it: {before}")
