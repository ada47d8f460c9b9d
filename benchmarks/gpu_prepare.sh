#!/usr/bin/env bash
# Run HERE (not on the GPU machine): lays out build/gpu-carry/ for benchmarks/gpu_check.sh.
#   build/gpu-carry/models/   the face models from this machine's cache (affectstream models fetch)
#   build/gpu-carry/Megamind.avi  the bench video
#   build/gpu-carry/wheels/   our pure-Python and small binary dependencies, without torch/torchvision
#                             (the GPU machine must bring its own CUDA build of torch)
# The device tool carries at most 64 MiB: the script stops if the folder is bigger.
set -euo pipefail
cd "$(dirname "$0")/.."
carry=build/gpu-carry
rm -rf "$carry" && mkdir -p "$carry/wheels"
.venv/bin/affectstream models fetch >/dev/null
cp -r "${AFFECTSTREAM_MODELS:-$HOME/.cache/affectstream/models}" "$carry/models"
# The bench video, in case the GPU machine has no opencv-doc.
cp /usr/share/doc/opencv-doc/examples/data/Megamind.avi "$carry/Megamind.avi"
# What the package imports at run time besides torch; --no-deps: each one alone, pinned to what runs here.
for package in open_clip_torch av safetensors ftfy regex timm huggingface_hub onnxruntime-gpu h5py \
               websockets tqdm pytest pytest-timeout; do
  version=$(.venv/bin/python -m pip show "${package/onnxruntime-gpu/onnxruntime}" 2>/dev/null | awk '/^Version:/ {print $2}')
  .venv/bin/python -m pip download -q --no-deps -d "$carry/wheels" "$package${version:+==$version}" \
    || echo "gpu_prepare: could not download $package (the check runs without it)" >&2
done
size=$(du -sm "$carry" | cut -f1)
echo "build/gpu-carry: ${size} MiB"
if [ "$size" -gt 64 ]; then
  echo "gpu_prepare: ${size} MiB is over the 64 MiB the device tool carries; drop the largest wheels" >&2
  ls -S "$carry/wheels" | head >&2
  exit 1
fi
