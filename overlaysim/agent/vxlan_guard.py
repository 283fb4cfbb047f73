"""The cleartext-VXLAN guard of encrypted networks: an nftables table that drops and
counts VXLAN packets carrying the VNI of an encrypted network.

An encrypted network has no VXLAN device, so the kernel would drop such packets anyway,
silently; the guard makes the drop explicit and countable (``docs/encryption.md``).
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess

from overlaysim.agent import names

log = logging.getLogger(__name__)


class GuardError(RuntimeError):
    """nftables is missing or refused the guard's rules."""


class ClearVxlanGuard:
    """nftables table :data:`~overlaysim.agent.names.ESP_TABLE` that drops and counts cleartext VXLAN per VNI.

    An encrypted network has no VXLAN device, so the kernel would drop such packets
    anyway, silently; this makes the drop explicit and countable. ``netns`` is a
    namespace path (``None``: the caller's).
    """

    TABLE = names.ESP_TABLE

    def __init__(self, vxlan_port: int, netns: str | None = None) -> None:
        self.vxlan_port = vxlan_port
        self.netns = netns
        self._vnis: set[int] = set()
        self._made = False

    def _nft(self, script: str, *args: str) -> str:
        nft = shutil.which("nft")
        if nft is None:
            raise GuardError("nft (nftables) is not installed: cannot guard encrypted VNIs")
        cmd = [nft, *args] if args else [nft, "-f", "-"]
        if self.netns is not None:
            cmd = ["nsenter", f"--net={self.netns}", *cmd]
        proc = subprocess.run(cmd, input=script, capture_output=True, text=True, timeout=10)
        if proc.returncode != 0:
            raise GuardError(f"nft {' '.join(args) or '-f'}: {proc.stderr.strip()}")
        return proc.stdout

    def add(self, vni: int) -> None:
        """Drop cleartext VXLAN with ``vni`` from now on."""
        if vni in self._vnis:
            return
        lines = []
        if not self._made:
            lines += [
                f"add table inet {self.TABLE}",
                f"add chain inet {self.TABLE} input {{ type filter hook input priority -10; }}",
            ]
        # VNI = 24 bits at bit 96 of the transport header (UDP 8 bytes, VXLAN flags 4).
        lines += [
            f"add counter inet {self.TABLE} clear_vxlan_{vni}",
            f"add rule inet {self.TABLE} input udp dport {self.vxlan_port} @th,96,24 {vni} "
            f'counter name "clear_vxlan_{vni}" drop',
        ]
        self._nft("\n".join(lines) + "\n")
        self._made = True
        self._vnis.add(vni)

    def dropped(self) -> dict[int, int]:
        """Packets dropped per VNI so far."""
        if not self._made:
            return {}
        out = json.loads(self._nft("", "-j", "list", "counters", "table", "inet", self.TABLE))
        counts = {}
        for item in out.get("nftables", []):
            c = item.get("counter")
            if c and c.get("name", "").startswith("clear_vxlan_"):
                counts[int(c["name"].rpartition("_")[2])] = int(c.get("packets", 0))
        return counts

    def close(self) -> None:
        """Delete the table (idempotent; a namespace already gone is fine)."""
        if self._made:
            try:
                self._nft(f"delete table inet {self.TABLE}\n")
            except (GuardError, OSError) as exc:
                log.debug("nft cleanup: %s", exc)
            self._made = False
            self._vnis.clear()
