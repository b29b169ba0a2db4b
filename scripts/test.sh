#!/usr/bin/env bash
# Install ferryman with its test dependencies (and the system programs the tests run for
# real: Chromium for the web UI, pebble for ACME, nghttp2's tools for HTTP/2, etcd for configs
# kept in etcd; a C compiler for the compiled core), then run the whole test suite on the
# Python modules and the request path's tests on the compiled core. Arguments (e.g. a test
# file) run just those, once, on the Python modules.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
for pair in chromium:chromium chromedriver:chromium-driver pebble:pebble nghttp:nghttp2-client etcd:etcd-server cc:build-essential; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair##*:}")
done
if ((${#need[@]})); then
    sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi
python3 -m pip install --quiet --disable-pip-version-check -e '.[test]'
python3 -m pytest -q "$@"
if [ $# -eq 0 ]; then
    # The tests of the request path again on the compiled core (setup.py, FERRYMAN_COMPILE=1),
    # built by mypyc into a scratch copy: the test processes and the ferryman processes they
    # start run it. Left out (they run the same compiled code only as the others do): the web
    # UI in a browser, L4-only proxying, ACME, and configs kept in etcd.
    build="$(mktemp -d)"
    trap 'rm -rf "$build"' EXIT
    echo "compiled core: building (mypyc) ..."
    bash scripts/build_compiled.sh python3 "$build"
    FERRYMAN_EXPECT_COMPILED=1 PYTHONPATH="$build/src" python3 -m pytest -q -p no:cacheprovider tests/unit tests/e2e \
        --ignore=tests/e2e/test_tcp_proxy.py --ignore=tests/e2e/test_udp_proxy.py --ignore=tests/e2e/test_example_l4.py \
        --ignore=tests/e2e/test_acme.py --ignore=tests/e2e/test_etcd_config.py --ignore=tests/e2e/test_etcd_tls.py
fi
