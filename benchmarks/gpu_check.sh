#!/usr/bin/env bash
# The GPU check, one prepared script (docs/benchmarks.md): on a machine with an NVIDIA GPU, in under
# 8 minutes, it installs affectstream from this checkout and the carried wheels, runs the CUDA tests
# (face stage fp16, encoders, TensorRT where installed) and the GPU bench sections, and writes
# $OUT/gpu_check.json (plus the bench JSON and the pytest log beside it).
#
#   here:            bash benchmarks/gpu_prepare.sh          # build/gpu-carry: models + wheels (<= 64 MiB)
#   on the device:   bash benchmarks/gpu_check.sh            # with build/gpu-carry carried along
#
# It needs a CUDA build of torch on the device (it cannot download one there); without it, it says so
# in the JSON and exits 3.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-build/gpu-check}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
carry=build/gpu-carry
started=$(date +%s)
json() { "$PY" - "$@" <<'PY'
import json, sys
path, key, value = sys.argv[1], sys.argv[2], sys.argv[3]
try:
    data = json.load(open(path))
except (OSError, ValueError):
    data = {}
try:
    data[key] = json.loads(value)
except ValueError:
    data[key] = value
json.dump(data, open(path, "w"), indent=2)
PY
}
report="$OUT/gpu_check.json"
json "$report" started "\"$(date -u +%FT%TZ)\""
json "$report" nvidia_smi "$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -1 | "$PY" -c 'import json,sys; print(json.dumps(sys.stdin.read().strip()))')"

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  json "$report" error '"no CUDA build of torch here: the device image must provide one (it cannot be downloaded on the device)"'
  exit 3
fi
json "$report" torch "$("$PY" -c 'import json, torch; print(json.dumps({"version": torch.__version__, "cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name(0)}))')"

# Install: the carried wheels, then this checkout without resolving anything online.
if [ -d "$carry/wheels" ]; then
  "$PY" -m pip install -q --no-index --find-links "$carry/wheels" "$carry"/wheels/*.whl 2>"$OUT/pip.log" || true
fi
"$PY" -m pip install -q --no-deps --no-build-isolation -e . 2>>"$OUT/pip.log" || true
if [ -d "$carry/models" ]; then
  export AFFECTSTREAM_MODELS="$PWD/$carry/models"
fi
export OMP_WAIT_POLICY=PASSIVE

# 1. CUDA tests (each skips with its reason where a part is missing, e.g. TensorRT).
timeout 240 "$PY" -m pytest -q -p no:cacheprovider tests/test_faces_cuda.py tests/test_encoder.py tests/test_tensorrt.py \
  -rs -o addopts="" --timeout 120 >"$OUT/pytest.log" 2>&1
json "$report" cuda_tests_exit "$?"
json "$report" cuda_tests_summary "$(tail -1 "$OUT/pytest.log" | "$PY" -c 'import json,sys; print(json.dumps(sys.stdin.read().strip()))')"

# 2. GPU bench sections: encoders and pipeline latency (short), then the face stage (no fer peer here).
video=/usr/share/doc/opencv-doc/examples/data/Megamind.avi
[ -f "$video" ] || video="$PWD/$carry/Megamind.avi"
if [ -f "$video" ]; then
  timeout 150 "$PY" -m affectstream bench --device cuda --video "$video" --variants torch-fp32,torch-fp16,compile-fp16 \
    --batches 1,8,32 --repeats 5 --sections a,b --seconds 8 --out "$OUT/bench.json" >"$OUT/bench.log" 2>&1
  json "$report" bench_exit "$?"
  timeout 150 "$PY" -m affectstream bench --device cuda --video "$video" --sections faces --no-fer --seconds 8 \
    --soak-minutes 1 --face-streams 8 --out "$OUT/bench_faces.json" >"$OUT/bench_faces.log" 2>&1
  json "$report" bench_faces_exit "$?"
else
  json "$report" bench '"skipped: no test video on this machine"'
fi
json "$report" seconds "$(( $(date +%s) - started ))"
cat "$report"
