#!/bin/bash
# `salt bench loader --s3`: the cache read back from an S3-protocol server on 127.0.0.1 (moto's
# standalone server, from the dev extras), beside local disk. Stops the server by its pid.
# Usage: bash benchmarks/loader_s3.sh [salt bench loader options, e.g. --videos 8 --size 112]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(dirname "$(command -v python)")
PORT=$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$BIN/moto_server" -H 127.0.0.1 -p "$PORT" > /dev/null 2>&1 &
SERVER=$!
trap 'kill $SERVER' EXIT
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1
export FSSPEC_S3_ENDPOINT_URL="http://127.0.0.1:$PORT"
for _ in $(seq 600); do python -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 1)" 2>/dev/null && break; sleep 0.1; done
python -c "import fsspec; fsspec.filesystem('s3').mkdir('bench')"
python -m salt.cli bench loader --s3 s3://bench/cache "$@"
