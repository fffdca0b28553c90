#!/usr/bin/env bash
# Regenerate the greeter stubs from greeter.proto with `gz gen` (grpcio-tools, then the generated
# absolute `import greeter_pb2` made package-relative).
# Usage: examples/greeter/gen.sh   (PYTHON selects the interpreter; default python3)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
python="${PYTHON:-python3}"

PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" "$python" -m gz.scaffold.cli gen "$here/greeter.proto"
