#!/usr/bin/env bash
# Install the tools the benchmarks drive (Debian/Ubuntu). Safe to run again.
# libnginx-mod-stream: Debian builds nginx's stream (L4) module as a dynamic module.
set -euo pipefail
PKGS=(nginx libnginx-mod-stream haproxy wrk iperf3)
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
missing=()
for p in "${PKGS[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "all present: ${PKGS[*]}"
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
