#!/usr/bin/env bash
# Install the tools the benchmarks drive (Debian/Ubuntu). Safe to run again.
# libnginx-mod-stream: Debian builds nginx's stream (L4) module as a dynamic module.
#
#   bash benchmarks/install.sh                   # nginx, haproxy, wrk, iperf3
#   bash benchmarks/install.sh --with-mitmproxy  # and mitmproxy, for l7.py --with-mitmproxy
#
# mitmproxy pins its dependencies (h11, cryptography, brotli, zstandard, ...) to versions
# that differ from ferryman's, so it goes into a venv of its own ($MITMPROXY_VENV, default
# /tmp/ferryman-bench-mitmproxy), never into the project's environment; l7.py finds its
# mitmdump there.
set -euo pipefail
WITH_MITMPROXY=0
for arg in "$@"; do
  case "$arg" in
    --with-mitmproxy) WITH_MITMPROXY=1 ;;
    *) echo "usage: $0 [--with-mitmproxy]" >&2; exit 2 ;;
  esac
done

PKGS=(nginx libnginx-mod-stream haproxy wrk iperf3)
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
missing=()
for p in "${PKGS[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "all present: ${PKGS[*]}"
else
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if [ "$WITH_MITMPROXY" -eq 1 ]; then
  VENV="${MITMPROXY_VENV:-/tmp/ferryman-bench-mitmproxy}"
  if [ -x "$VENV/bin/mitmdump" ]; then
    echo "mitmproxy present: $("$VENV/bin/mitmdump" --version | head -n1) in $VENV"
  else
    "${PYTHON:-python3}" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q mitmproxy
    echo "installed: $("$VENV/bin/mitmdump" --version | head -n1) in $VENV"
  fi
fi
