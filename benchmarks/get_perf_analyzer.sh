#!/usr/bin/env bash
# perf_analyzer, Triton's load generator, into .venv/perf_analyzer/ (or $1). PyPI's perf-analyzer
# is a 0.1.0 placeholder and current tritonclient wheels no longer carry the binary; the
# tritonclient 2.41.0 wheel does. It links libcudart.so.12 (taken from NVIDIA's PyPI runtime wheel;
# no GPU is needed to run it) and libb64 (the copy nvidia-pytriton bundles).
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${1:-.venv/perf_analyzer}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
.venv/bin/pip download -q --no-deps -d "$tmp" tritonclient==2.41.0 nvidia-cuda-runtime-cu12==12.9.79
mkdir -p "$dest/lib"
unzip -q -o -j "$tmp"/tritonclient-2.41.0-*.whl 'tritonclient-2.41.0.data/data/bin/perf_analyzer' -d "$dest/lib"
unzip -q -o -j "$tmp"/nvidia_cuda_runtime_cu12-*.whl 'nvidia/cuda_runtime/lib/libcudart.so.12' -d "$dest/lib"
cp .venv/lib/python3.11/site-packages/nvidia_pytriton.libs/libb64-*.so.0d "$dest/lib/libb64.so.0d"
chmod +x "$dest/lib/perf_analyzer"
cat > "$dest/perf_analyzer" <<'WRAP'
#!/usr/bin/env bash
here=$(dirname "$(readlink -f "$0")")
LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$here/lib/perf_analyzer" "$@"
WRAP
chmod +x "$dest/perf_analyzer"
"$dest/perf_analyzer" --version 2>&1 | head -n 1 || true
echo "$dest/perf_analyzer"
