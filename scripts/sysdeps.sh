#!/usr/bin/env bash
# Install the Debian packages the emulator needs, only when something is missing.
# Idempotent and quiet when everything is present; never fatal for simulator-only use
# unless OVERLAYSIM_REQUIRE_EMU=1 (CI sets it: emulation tests must run there).
set -euo pipefail

need=()
command -v mnexec   >/dev/null 2>&1 || need+=(mininet)
command -v iperf3   >/dev/null 2>&1 || need+=(iperf3)
command -v ip       >/dev/null 2>&1 || need+=(iproute2)
command -v nft      >/dev/null 2>&1 || need+=(nftables)
command -v iptables >/dev/null 2>&1 || need+=(iptables)
command -v brctl    >/dev/null 2>&1 || need+=(bridge-utils)
command -v tcpdump  >/dev/null 2>&1 || need+=(tcpdump)
command -v tshark   >/dev/null 2>&1 || need+=(tshark)
command -v ping     >/dev/null 2>&1 || need+=(iputils-ping)
command -v ethtool  >/dev/null 2>&1 || need+=(ethtool)
# The NFQUEUE delay line's binding (pip NetfilterQueue) is compiled when the venv is made.
[ -f /usr/include/libnetfilter_queue/libnetfilter_queue.h ] || need+=(libnetfilter-queue-dev)
command -v gcc      >/dev/null 2>&1 || need+=(gcc)
py_inc=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])' 2>/dev/null || true)
[ -n "$py_inc" ] && [ -f "$py_inc/Python.h" ] || need+=(python3-dev)

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "overlaysim: missing Debian packages for emulation: ${need[*]}" >&2
  echo "overlaysim: install them with: sudo apt-get install ${need[*]}" >&2
  if [ "${OVERLAYSIM_REQUIRE_EMU:-0}" = "1" ]; then exit 1; fi
  exit 0
fi
echo "overlaysim: installing Debian packages: ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
