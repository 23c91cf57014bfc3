#!/usr/bin/env bash
# Generate Python code for proto/incidentledger/**.proto into OUT_DIR/incidentledger.
# Usage: tools/genproto.sh PYTHON OUT_DIR
#   PYTHON  interpreter of the dev venv (has grpcio-tools, mypy-protobuf, googleapis-common-protos)
#   OUT_DIR gen/ for `make proto`, a temp dir for `make proto-check`
# Wipes OUT_DIR/incidentledger first, then writes *_pb2.py, *_pb2.pyi, *_pb2_grpc.py,
# *_pb2_grpc.pyi and an empty __init__.py in every package directory. Never edit the output.
set -euo pipefail

if [[ $# -ne 2 ]]; then
    echo "usage: $0 PYTHON OUT_DIR" >&2
    exit 2
fi
python=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
out_dir=$2
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
proto_root=$root/proto
bin_dir=$(dirname "$python")

mkdir -p "$out_dir"
out_dir=$(cd "$out_dir" && pwd)
rm -rf "$out_dir/incidentledger"

mapfile -t files < <(cd "$proto_root" && find incidentledger -name '*.proto' -type f 2>/dev/null | LC_ALL=C sort)
if [[ ${#files[@]} -eq 0 ]]; then
    echo "genproto: no .proto files under proto/incidentledger: nothing to generate" >&2
    exit 0
fi

# .proto files shipped by googleapis-common-protos (google/api/*, google/rpc/*), so the contract
# may import them; grpc_tools.protoc adds the well-known types (google/protobuf/*) by itself.
googleapis_include=$("$python" -c 'import pathlib, google.api; print(pathlib.Path(google.api.__path__[0]).parent.parent)')

cd "$proto_root"
"$python" -m grpc_tools.protoc \
    -I. \
    -I"$googleapis_include" \
    --plugin=protoc-gen-mypy="$bin_dir/protoc-gen-mypy" \
    --plugin=protoc-gen-mypy_grpc="$bin_dir/protoc-gen-mypy_grpc" \
    --python_out="$out_dir" \
    --mypy_out="$out_dir" \
    --grpc_python_out="$out_dir" \
    --mypy_grpc_out="$out_dir" \
    "${files[@]}"

find "$out_dir/incidentledger" -type d -exec touch {}/__init__.py \;
echo "genproto: generated ${#files[@]} file(s) into $out_dir/incidentledger" >&2
