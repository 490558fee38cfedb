#!/bin/sh
# Entrypoint of the lumbarseg Triton image: runs the given command (tritonserver and its flags)
# with the restricted APIs behind the admin key, exactly as lumbarseg.triton.server does on a
# CPU machine. Inference, model control (load/unload, including a load that ships its own
# model.py), shared memory, trace, logging and statistics answer only requests carrying
# `lumbarseg-admin-key: <key>` (gRPC: `triton-grpc-protocol-lumbarseg-admin-key`); inference is
# gRPC only (on HTTP it needs a value drawn here and kept nowhere: Triton 2.51's HTTP frontend
# allocates from a JSON input's declared shape, and one such request aborts the server); health,
# metadata and model configs stay open for probes. The key: $LUMBARSEG_TRITON_KEY, else the file
# $LUMBARSEG_TRITON_KEY_FILE (default /run/secrets/triton_admin_key, a compose or Kubernetes
# secret). Without a key Triton does not start: an open repository API runs any client's code.
set -eu
key="${LUMBARSEG_TRITON_KEY:-}"
file="${LUMBARSEG_TRITON_KEY_FILE:-/run/secrets/triton_admin_key}"
if [ -z "$key" ] && [ -r "$file" ]; then
  key=$(tr -d ' \t\r\n' < "$file")
fi
if [ -z "$key" ]; then
  echo "triton_entrypoint: no admin key (set LUMBARSEG_TRITON_KEY or mount the key file at $file);" \
       "refusing to start Triton with open model control" >&2
  exit 64
fi
case "$key" in
  *[:=,]*) echo "triton_entrypoint: the admin key must not contain ':', '=' or ','" >&2; exit 64 ;;
esac
admin=model-repository,shared-memory,trace,logging,statistics
sealed=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
exec "$@" "--http-restricted-api=$admin:lumbarseg-admin-key=$key" "--http-restricted-api=inference:lumbarseg-sealed=$sealed" \
  "--grpc-restricted-protocol=inference,$admin:lumbarseg-admin-key=$key"
