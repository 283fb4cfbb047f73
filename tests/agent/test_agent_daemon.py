"""Three agents in one process over loopback, with fake data planes (no root needed).

Exercises the daemon's wiring end to end: seeds, membership, the manager API served by
one agent, control operations, table gossip reaching the other agents' data planes,
graceful leave, garbage packets, and the log lines the runner reads.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from agent_fakes import A, B, C, FakeDataPlane, aio, free_port

from overlaysim.agent.control import ControlClient, ControlError
from overlaysim.agent.daemon import Agent, AgentConfig, parse_args
from overlaysim.agent.logging import read_log
from overlaysim.agent.manager import EncryptionUnsupported, ManagerClient
from overlaysim.core.cluster_errors import NotAttachable


async def until(pred: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what or pred}")
        await asyncio.sleep(0.05)


def mac(ip: str) -> str:
    return "02:42:" + ":".join(f"{int(b):02x}" for b in ip.split("."))


class Cluster3:
    """Agents a (serving the manager), b, c, each with a fake data plane."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.mport = free_port()
        self.agents: dict[str, Agent] = {}
        self.dps: dict[str, FakeDataPlane] = {}
        self.tasks: dict[str, asyncio.Task[int]] = {}

    def config(self, name: str, ip: str, seeds: tuple[str, ...]) -> AgentConfig:
        return AgentConfig(
            name=name,
            bind=ip,
            port=self.port,
            seeds=seeds,
            manager=f"{A}:{self.mport}",
            serve_manager=(name == "a"),
            control=self.tmp / f"{name}.sock",
            log=self.tmp / f"{name}.jsonl",
            profile="local",
            epoch=1,
            seed=7,
            leave_grace=0.3,
            reconcile_interval=0.5,
            traffic_interval=0.2,
        )

    async def start(self, name: str, ip: str, seeds: tuple[str, ...] = ()) -> Agent:
        dp = self.dps[name] = FakeDataPlane(underlay_ip=ip)
        agent = self.agents[name] = Agent(
            self.config(name, ip, seeds), dataplane=dp, handle_signals=False
        )
        self.tasks[name] = asyncio.get_running_loop().create_task(agent.run())
        await asyncio.wait_for(agent.started.wait(), 5)
        return agent

    def ctl(self, name: str) -> ControlClient:
        return ControlClient(self.tmp / f"{name}.sock", timeout=10)

    def log(self, name: str, kind: str) -> list[dict]:
        return [r for r in read_log(self.tmp / f"{name}.jsonl") if r["kind"] == kind]

    async def close(self) -> None:
        for agent in self.agents.values():
            agent.request_stop(leave=False)
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)


def alive(agent: Agent) -> set[str]:
    return {n for n, m in agent.node.membership.members().items() if m.state.value == "alive"}


@aio
async def test_three_agents_program_each_others_endpoints(tmp_path: Path) -> None:
    cl = Cluster3(tmp_path)
    seed = (f"{A}:{cl.port}",)
    try:
        a = await cl.start("a", A)
        b = await cl.start("b", B, seed)
        c = await cl.start("c", C, seed)
        await until(lambda: all(alive(x) == {"a", "b", "c"} for x in (a, b, c)), what="membership")

        manager = ManagerClient(f"{A}:{cl.mport}")
        web = await manager.network_create({"name": "web", "attachable": True})
        # the manager is also reachable through any agent's control socket
        backend = await cl.ctl("c").acall(
            "manager", call="network_create", args={"spec": {"name": "backend"}}
        )
        assert backend["attachable"] is False
        with pytest.raises(EncryptionUnsupported, match="authenticated cluster.*--gossip-key"):
            await manager.network_create({"name": "secret", "encrypted": True})
        with pytest.raises(EncryptionUnsupported, match="authenticated cluster.*--gossip-key"):
            await cl.ctl("b").acall(
                "manager", call="network_create", args={"spec": {"name": "s", "encrypted": True}}
            )

        r1 = await cl.ctl("a").acall("run", container="c1", network="web")
        r2 = await cl.ctl("b").acall("run", container="c2", network="web")
        assert r1["netns"] == "fake-c1" and r1["networks"][0]["mtu"] == 1450
        ip1, ip2 = r1["networks"][0]["ip"], r2["networks"][0]["ip"]
        assert ip1 != ip2 and r1["networks"][0]["vni"] == web["vni"]

        # each side's kernel gets the other's endpoint, pointing at the owner's VTEP
        await until(
            lambda: cl.dps["a"].kernel_state("web")[0] == {(mac(ip2), B)}, what="a programs c2"
        )
        await until(
            lambda: cl.dps["b"].kernel_state("web")[0] == {(mac(ip1), A)}, what="b programs c1"
        )
        assert cl.dps["c"].kernel_state("web") == (set(), set())  # c has no container on web
        assert "c" not in {x for x in (await cl.ctl("a").acall("tables"))["web"]}
        kernel = await cl.ctl("a").acall("kernel")
        assert kernel == {"web": {"fdb": [[mac(ip2), B]], "neigh": [[ip2, mac(ip2)]]}}

        # standalone containers are refused on a non-attachable network; tasks are not
        with pytest.raises(NotAttachable, match="not manually attachable"):
            await cl.ctl("c").acall("run", container="c3", network="backend")
        t = await cl.ctl("c").acall("task", container="api.1", network="backend")
        assert t["networks"][0]["network"] == "backend"
        with pytest.raises(ControlError, match="already exists"):
            await cl.ctl("c").acall("task", container="api.1", network="backend")
        # a task's name fields ride in its entry; the host's directory balances its VIP
        t2 = await cl.ctl("c").acall(
            "task", container="api.2", network="backend", aliases=["DB"],
            task={"service": "api", "slot": 2, "vip": "10.99.0.2", "gen": 1},
        )  # fmt: skip
        value = (await cl.ctl("c").acall("tables"))["backend"]["api.2"]["value"]
        assert value["aliases"] == "db" and value["service"] == "api" and value["slot"] == "2"
        assert value["vip"] == "10.99.0.2" and value["ip"] == t2["networks"][0]["ip"]
        backends = c.svcnet.names.directory.vip_backends("api.2")
        assert backends == {"10.99.0.2": (t2["networks"][0]["ip"],)}

        # the data plane is only ever called off the event loop thread
        assert cl.dps["a"].threads and all(n.startswith("dataplane") for n in cl.dps["a"].threads)

        # rm: the entry disappears from the other kernel
        await cl.ctl("b").acall("rm", container="c2")
        await until(
            lambda: cl.dps["a"].kernel_state("web") == (set(), set()), what="a unprograms c2"
        )
        assert ("detach", "c2", "web") in cl.dps["b"].calls
        assert "web" not in b.node.tables.networks()  # left the network with its last container

        # garbage does not hurt
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"\x00garbage", (A, cl.port))
        await until(lambda: a.counters.wire_errors == 1, what="garbage counted")
        status = await cl.ctl("a").acall("status")
        assert status["counters"]["wire_errors"] == 1 and status["containers"] == {"c1": ["web"]}
        assert set(status["members"]) == {"a", "b", "c"}

        # graceful leave of c: a and b see it leave, c's process ends cleanly
        await cl.ctl("c").acall("leave")
        assert await asyncio.wait_for(cl.tasks["c"], 5) == 0
        await until(lambda: a.node.membership.member("c").state.value == "left", what="c left")
        assert cl.dps["c"].closed

        # the logs tell the story the runner reads
        commits = [(r["network"], r["key"], r["op"]) for r in cl.log("b", "entry_commit")]
        assert commits == [("web", "c2", "add"), ("web", "c2", "delete")]
        prog = [(r["key"], r["op"], r["vtep"]) for r in cl.log("a", "entry_programmed")]
        assert prog == [("c2", "add", B), ("c2", "delete", B)]
        # entry_seen carries the endpoint value: what the emulator's DNS metrics replay
        seen = [r for r in cl.log("a", "entry_seen") if r["key"] == "c2"]
        assert [r["op"] for r in seen] == ["add", "delete"]
        assert seen[0]["table"] == "endpoints" and seen[0]["value"]["ip"] == ip2
        assert {r["subject"] for r in cl.log("a", "member_join")} == {"b", "c"}
        assert [r["subject"] for r in cl.log("a", "member_leave")] == ["c"]
        assert cl.log("a", "wire_error")[0]["what"] == "wire"
        traffic = cl.log("a", "traffic")
        assert traffic and sum(r["msgs_recv"] for r in traffic) > 0
        assert set(traffic[0]) >= {"t", "bytes_sent", "msgs_sent", "bytes_recv", "msgs_recv"}
        assert cl.log("c", "stop") and cl.log("c", "start")[0]["epoch"] == 1
    finally:
        await cl.close()
    assert all(dp.closed for dp in cl.dps.values())


@aio
async def test_reconcile_repairs_drift_from_the_tables(tmp_path: Path) -> None:
    cl = Cluster3(tmp_path)
    try:
        a = await cl.start("a", A)
        b = await cl.start("b", B, (f"{A}:{cl.port}",))
        await until(lambda: alive(a) == alive(b) == {"a", "b"}, what="membership")
        manager = ManagerClient(f"{A}:{cl.mport}")
        await manager.network_create({"name": "web", "attachable": True})
        await cl.ctl("a").acall("run", container="c1", network="web")
        r2 = await cl.ctl("b").acall("run", container="c2", network="web")
        ip2 = r2["networks"][0]["ip"]
        await until(lambda: cl.dps["a"].kernel_state("web")[0] == {(mac(ip2), B)}, what="program")
        # drift: someone deletes the entry and leaves a stale one behind
        before = len(cl.log("a", "reconcile"))
        fdb, neigh = cl.dps["a"].kernel["web"]
        fdb.clear()
        fdb.add(("02:42:0a:00:00:63", "10.9.9.9"))
        repairs = await cl.ctl("a").acall("reconcile")
        # On a loaded machine the periodic reconcile (every 0.5 s here) can run between
        # the drift and the request; then it made the repair and the request finds none.
        # Either way exactly one reconcile repaired exactly the drift, and logged it.
        done = cl.log("a", "reconcile")[before:]
        assert len(done) == 1
        assert done[0]["removed"] == [["fdb", "02:42:0a:00:00:63", "10.9.9.9"]]
        assert done[0]["added"] == [["fdb", mac(ip2), B]]
        assert repairs in ({}, {"web": {"removed": done[0]["removed"], "added": done[0]["added"]}})
        assert cl.dps["a"].kernel_state("web")[0] == {(mac(ip2), B)}
        assert await cl.ctl("a").acall("reconcile") == {}
        # the periodic reconcile repairs without being asked
        cl.dps["a"].kernel["web"][1].clear()
        await until(lambda: cl.dps["a"].kernel_state("web")[1] == {(ip2, mac(ip2))}, what="auto")
        assert len(cl.log("a", "reconcile")) == before + 2
    finally:
        await cl.close()


@aio
async def test_timer_lateness_is_logged_and_shows_a_starved_loop(tmp_path: Path) -> None:
    cl = Cluster3(tmp_path)
    try:
        await cl.start("a", A)
        await until(lambda: bool(cl.log("a", "timer_lag")), what="a timer_lag line")
        first = cl.log("a", "timer_lag")[0]
        assert first["fires"] == len(first["late_ms"]) > 0
        assert all(0.0 <= x < 250.0 for x in first["late_ms"])  # an idle loop is on time
        # starve the loop: the gossip timer (every 0.1 s with this profile) comes due and
        # cannot run until the loop is free again
        time.sleep(0.6)
        await until(
            lambda: any(max(r["late_ms"]) >= 300.0 for r in cl.log("a", "timer_lag")),
            what="a late timer logged",
        )
    finally:
        await cl.close()


@aio
async def test_a_deadline_already_past_when_asked_for_is_not_lateness(tmp_path: Path) -> None:
    """The core may hand the driver a deadline that passed before it asked (work due at
    once); the timer runs at once, and its lateness counts from then, not from the
    deadline (a quickstart run logged a 6 s late timer on a loop that was on time)."""
    cl = Cluster3(tmp_path)
    try:
        a = await cl.start("a", A)
        await until(lambda: bool(cl.log("a", "timer_lag")), what="a timer_lag line")
        before = len(cl.log("a", "timer_lag"))
        real = a.node.next_timer
        past = [time.monotonic() - 5.0]
        a.node.next_timer = lambda: past.pop() if past else real()  # type: ignore[method-assign]
        a._flush()
        await until(lambda: len(cl.log("a", "timer_lag")) > before + 1, what="two more lines")
        late = [x for r in cl.log("a", "timer_lag")[before:] for x in r["late_ms"]]
        assert not past and late and max(late) < 1000.0, late
    finally:
        await cl.close()


def test_command_line() -> None:
    cfg = parse_args(
        "--name h3 --bind 172.30.0.3 --seeds 172.30.0.1:7946,172.30.0.2 --manager 172.30.0.1 "
        "--control /run/x/h3.sock --profile local --epoch 5".split()
    )
    assert cfg.seeds == ("172.30.0.1:7946", "172.30.0.2:7946")
    assert cfg.manager_addr == "172.30.0.1:2377"
    assert (cfg.addr, cfg.epoch, cfg.profile, cfg.serve_manager) == (
        "172.30.0.3:7946",
        5,
        "local",
        False,
    )
    later = parse_args(["--name", "h3", "--bind", "172.30.0.3"])
    assert later.epoch > 1_600_000_000_000  # ms since 1970: a restart gets a higher one
    assert (
        parse_args("--name m --bind 10.0.0.1 --serve-manager".split()).manager_addr
        == "10.0.0.1:2377"
    )
    with pytest.raises(SystemExit):
        parse_args(["--name", "h3", "--bind", "1.2.3.4", "--profile", "fast"])
