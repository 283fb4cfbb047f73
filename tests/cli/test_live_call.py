"""Reaching a testbed's agents: what the user sees when one is not there."""

from __future__ import annotations

from pathlib import Path

import pytest

from overlaysim.emu.live import LiveTestbed
from overlaysim.errors import UserError


def test_an_agent_out_of_reach_is_one_line_naming_its_host(tmp_path: Path) -> None:
    sock = str(tmp_path / "h1.sock")  # never created: no agent listens there
    tb = LiveTestbed(run_id="r", owner_pid=1, manager="h1", hosts={"h1": {"control": sock}})
    with pytest.raises(UserError, match=f"cannot reach the agent of h1 at {sock}"):
        tb.call_manager("network_ls")
    with pytest.raises(UserError, match="host 'h9' is not in the running testbed"):
        tb.call("h9", "status")
