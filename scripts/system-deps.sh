#!/usr/bin/env bash
# Debian packages the tests need: the ffmpeg CLI (an independent decoder for frame
# extraction tests), headless Chromium (the HTML report test) and the Slurm daemons
# for the real-cluster tests. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v chromium >/dev/null || need+=(chromium)
command -v ffmpeg >/dev/null || need+=(ffmpeg)
if ((${#need[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "[system-deps] missing ${need[*]}: install them (Debian: apt-get install ${need[*]})" >&2
    exit 1
  fi
  echo "[system-deps] installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
if [[ -x scripts/slurm/cluster.sh ]]; then
  scripts/slurm/cluster.sh install
fi
