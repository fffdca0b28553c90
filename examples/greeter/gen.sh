#!/usr/bin/env bash
# Regenerate the greeter stubs from greeter.proto with grpcio-tools.
# Usage: examples/greeter/gen.sh   (PYTHON selects the interpreter; default python3)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python3}"

"$python" -m grpc_tools.protoc -I "$here" \
    --python_out="$here" --pyi_out="$here" --grpc_python_out="$here" \
    "$here/greeter.proto"

# protoc emits an absolute import; make it relative so the stubs work as a package.
"$python" - "$here/greeter_pb2_grpc.py" <<'PY'
import re
import sys

path = sys.argv[1]
with open(path, encoding="utf-8") as f:
    text = f.read()
text, n = re.subn(r"^import greeter_pb2 as greeter__pb2$",
                  "from . import greeter_pb2 as greeter__pb2", text, flags=re.M)
if n != 1:
    sys.exit(f"gen.sh: expected one 'import greeter_pb2' line in {path}, found {n}")
with open(path, "w", encoding="utf-8") as f:
    f.write(text)
PY
echo "generated greeter_pb2.py, greeter_pb2.pyi, greeter_pb2_grpc.py in $here"
