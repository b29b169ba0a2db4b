#!/usr/bin/env bash
# Install the tools the benchmarks drive (Debian/Ubuntu). Safe to run again.
# libnginx-mod-stream: Debian builds nginx's stream (L4) module as a dynamic module.
#
#   bash benchmarks/install.sh                          # nginx, haproxy, wrk, iperf3
#   bash benchmarks/install.sh --with-optimized-python  # and a venv of /usr/bin/python3
#   bash benchmarks/install.sh --with-mitmproxy         # and mitmproxy, for --with-mitmproxy
#
# --with-optimized-python: the CPU a Python proxy spends per request depends a lot on how
# CPython was built. Debian/Ubuntu build /usr/bin/python3 with PGO and LTO (pyenv, by
# default, does not), so this makes a venv of it ($FERRYMAN_BENCH_PY_VENV, default
# /tmp/ferryman-bench-py) with the project installed editable; the harnesses run ferryman
# on it with `--python optimized`.
#
# mitmproxy pins its dependencies (h11, cryptography, brotli, zstandard, ...) to versions
# that differ from ferryman's, so it goes into a venv of its own, never into the project's
# environment: $MITMPROXY_VENV (default /tmp/ferryman-bench-mitmproxy) made with
# ${PYTHON:-python3}; with --with-optimized-python too, $MITMPROXY_OPTIMIZED_VENV (default
# /tmp/ferryman-bench-mitmproxy-optimized) made with /usr/bin/python3 instead, so that
# mitmproxy and ferryman are compared on the same interpreter. l7.py picks the mitmdump
# whose interpreter is ferryman's.
set -euo pipefail
WITH_MITMPROXY=0
WITH_OPT_PY=0
for arg in "$@"; do
  case "$arg" in
    --with-mitmproxy) WITH_MITMPROXY=1 ;;
    --with-optimized-python) WITH_OPT_PY=1 ;;
    *) echo "usage: $0 [--with-optimized-python] [--with-mitmproxy]" >&2; exit 2 ;;
  esac
done
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BASE_PY=/usr/bin/python3

PKGS=(nginx libnginx-mod-stream haproxy wrk iperf3)
if [ "$WITH_OPT_PY" -eq 1 ]; then
  PKGS+=(python3 python3-venv)  # the distribution's interpreter and its venv/ensurepip
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
missing=()
for p in "${PKGS[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ "$WITH_OPT_PY" -eq 1 ] && [ -x "$BASE_PY" ] \
    && ! "$BASE_PY" -c "import ensurepip, venv" >/dev/null 2>&1; then
  missing+=(python3-venv)  # present but without ensurepip: reinstall pulls pythonX.Y-venv
fi
if [ ${#missing[@]} -eq 0 ]; then
  echo "all present: ${PKGS[*]}"
else
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# the binary behind an interpreter (through venv and pyenv-shim indirections)
real_python() { "$1" -c 'import os, sys; print(os.path.realpath(sys.executable))'; }

# make_venv BASE DIR: a venv of BASE in DIR, unless DIR already is a venv of that binary
make_venv() {
  local base="$1" dir="$2"
  if [ -x "$dir/bin/python" ] \
      && "$dir/bin/python" -c "import sys; sys.exit(sys.prefix == sys.base_prefix)" 2>/dev/null \
      && [ "$(real_python "$dir/bin/python")" = "$(real_python "$base")" ]; then
    echo "venv present: $dir ($("$dir/bin/python" --version 2>&1), from $base)"
  else
    if [ -e "$dir" ]; then
      "$base" -m venv --clear "$dir"  # another interpreter's venv, or broken
    else
      "$base" -m venv "$dir"
    fi
    echo "created venv: $dir ($("$dir/bin/python" --version 2>&1), from $base)"
  fi
}

if [ "$WITH_OPT_PY" -eq 1 ]; then
  VENV="${FERRYMAN_BENCH_PY_VENV:-/tmp/ferryman-bench-py}"
  make_venv "$BASE_PY" "$VENV"
  # every time: cheap when satisfied, and it follows the project's dependencies
  "$VENV/bin/python" -m pip install -q -e "$REPO" mypy  # mypy: mypyc builds the compiled core (--compiled)
  echo "installed: ferryman (editable, $REPO) into $VENV; run the harnesses with --python optimized"
fi

if [ "$WITH_MITMPROXY" -eq 1 ]; then
  if [ "$WITH_OPT_PY" -eq 1 ]; then
    MVENV="${MITMPROXY_OPTIMIZED_VENV:-/tmp/ferryman-bench-mitmproxy-optimized}"
    MBASE="$BASE_PY"
  else
    MVENV="${MITMPROXY_VENV:-/tmp/ferryman-bench-mitmproxy}"
    MBASE="${PYTHON:-python3}"
  fi
  if [ -x "$MVENV/bin/mitmdump" ]; then
    echo "mitmproxy present: $("$MVENV/bin/mitmdump" --version | head -n1) in $MVENV ($("$MVENV/bin/python" --version 2>&1))"
  else
    make_venv "$MBASE" "$MVENV"
    "$MVENV/bin/python" -m pip install -q mitmproxy
    echo "installed: $("$MVENV/bin/mitmdump" --version | head -n1) in $MVENV (from $MBASE)"
  fi
fi
