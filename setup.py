"""Build settings beyond pyproject.toml: the optional compiled core.

``FERRYMAN_COMPILE=1 pip install --no-build-isolation .`` (with ``mypy`` installed) compiles the
per-request HTTP/1.1 modules below, and the HTTP/2 client connection, with mypyc into C
extensions; everything else, and every API, stays the same Python. Without the variable (the
default, and editable installs for development) nothing is compiled. ``ferryman version`` says
which one is running.
"""

import os

from setuptools import setup

# The modules every HTTP/1.1 request runs through: codec, exchange, connections, pool, and
# the gateway's hooks, backend choice and request metrics; and the HTTP/2 client connection, whose
# per-stream exchange is then a native subclass of the compiled Exchange, with its streams'
# flow-control credit (the rest of protocol/h2 stays interpreted: it mostly calls into the
# h2 library, and compiled it was slower).
COMPILED = [
    "src/ferryman/protocol/h1/events.py",
    "src/ferryman/protocol/h1/headers.py",
    "src/ferryman/protocol/h1/parser.py",
    "src/ferryman/protocol/h1/rules.py",
    "src/ferryman/protocol/h1/serializer.py",
    "src/ferryman/http/plan.py",
    "src/ferryman/http/session.py",
    "src/ferryman/http/exchange.py",
    "src/ferryman/http/downstream_h1.py",
    "src/ferryman/http/upstream_h1.py",
    "src/ferryman/http/downstream_h2.py",
    "src/ferryman/protocol/h2/credit.py",
    "src/ferryman/upstream/pool.py",
    "src/ferryman/upstream/balancer.py",
    "src/ferryman/upstream/selection/round_robin.py",
    "src/ferryman/runtime/upstreams.py",
    "src/ferryman/observability/metrics.py",
    "src/ferryman/gateway/http.py",
]


def ext_modules() -> list:
    if os.environ.get("FERRYMAN_COMPILE", "").lower() not in ("1", "true", "yes"):
        return []
    from mypyc.build import mypycify

    # the imported modules stay interpreted: type-checked only as far as the compiled ones use them
    # (and the dependencies need not be installed yet: pip builds before it installs them)
    return mypycify(["--follow-imports=silent", "--ignore-missing-imports", *COMPILED], opt_level="3")


setup(ext_modules=ext_modules())
