#!/usr/bin/env bash
# Build the compiled core (setup.py: FERRYMAN_COMPILE=1, mypyc) into a copy of the checkout:
#
#   bash scripts/build_compiled.sh PYTHON DEST     # then: PYTHONPATH=DEST/src PYTHON -m ferryman ...
#
# The copy leaves this tree without compiled modules, whose .so files would otherwise shadow
# the .py files being edited. PYTHON needs mypy (the test extra has it) and a C compiler.
set -euo pipefail
python="$1" dest="$2"
repo="$(cd "$(dirname "$0")/.." && pwd)"
rm -rf "$dest"
mkdir -p "$dest"
cp -r "$repo/src" "$repo/setup.py" "$repo/pyproject.toml" "$repo/README.md" "$dest/"
find "$dest/src" -name __pycache__ -prune -exec rm -rf {} +
cd "$dest"
FERRYMAN_COMPILE=1 "$python" setup.py -q build_ext --inplace > build.log 2>&1 || { tail -n 40 build.log >&2; exit 1; }
"$python" -c "import sys; sys.path.insert(0, 'src'); import ferryman; sys.exit(0 if ferryman.compiled_core() else 'the compiled modules did not load')"
