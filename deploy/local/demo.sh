#!/usr/bin/env bash
# `make demo`: start the local stack (if it is not running), make a sample phantom study
# as DICOM, send it through the API and print its grounded report, then stream it again over
# gRPC, sentence by sentence. The stack keeps running
# afterwards (API docs at the gateway's /docs); `.venv/bin/radreport down` stops it.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${RADREPORT_VENV:-.venv}
DEMO_DIR=${DEMO_DIR:-var/demo}
radreport="$VENV/bin/radreport"

rm -rf "$DEMO_DIR"
"$radreport" phantoms --n 1 --size 1024 --seed 7 --dicom --out "$DEMO_DIR/phantoms" >/dev/null
study=$(find "$DEMO_DIR/phantoms" -name '*.dcm' | head -n 1)
"$VENV/bin/python" - "$DEMO_DIR/phantoms/manifest.jsonl" <<'PY'
import json, sys
truth = json.loads(open(sys.argv[1]).readline())
print("Sample phantom study (synthetic; its true report):")
print("  FINDINGS:", truth["findings_text"])
print("  IMPRESSION:", truth["impression_text"])
PY
if ! "$VENV/bin/python" -c 'import sys; from radreport.stack import LocalStack, StackConfig; sys.exit(not LocalStack(StackConfig.from_env()).running())'; then
  echo "Starting the local stack (Redis, Triton, workers, DICOM gateway, gateway)..."
  "$radreport" up
fi
echo
echo "The draft report from the stack:"
"$radreport" report "$study" --study-id DEMO-STUDY-1 --force --save "$DEMO_DIR/report"
echo
echo "The same study streamed over gRPC (port ${RADREPORT_GATEWAY_GRPC_PORT:-50051}), each sentence as it is decoded:"
"$radreport" stream "$study" --study-id DEMO-STUDY-1 --force
echo
echo "The stack is still running: API docs at http://127.0.0.1:${RADREPORT_GATEWAY_PORT:-8080}/docs"
echo "Review page: http://127.0.0.1:${RADREPORT_GATEWAY_PORT:-8080}/review/  (sign in with: $radreport token --role radiologist)"
echo "Stop it with: $radreport down"
