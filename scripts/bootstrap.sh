#!/usr/bin/env bash
# Creates (or reuses) the project's virtual environment in .venv.
# The install is skipped when the hash of envs/*.txt and pyproject.toml matches the
# one recorded by the last successful install.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${REPROSEG_VENV:-.venv}"
PY="${PYTHON:-python3}"
want=$(cat envs/torch.txt envs/requirements.txt envs/no-build-isolation.txt pyproject.toml | sha256sum | cut -c1-16)
stamp="$VENV/.reproseg-env-hash"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  echo "[bootstrap] environment $VENV is current ($want)"
  exit 0
fi
echo "[bootstrap] installing environment into $VENV ($want)"
rm -f "$stamp"
[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${pip[@]}" install -q --upgrade pip wheel setuptools
"${pip[@]}" install -q -r envs/torch.txt
"${pip[@]}" install -q -r envs/requirements.txt
SAM2_BUILD_CUDA=0 DS_BUILD_OPS=0 "${pip[@]}" install -q --no-build-isolation -r envs/no-build-isolation.txt
"${pip[@]}" install -q --no-deps --no-build-isolation -e .
# Re-assert the pins: a later install must not have moved any of them.
"${pip[@]}" install -q -r envs/torch.txt -r envs/requirements.txt
# System tools the tests use (Debian): ffmpeg CLI for independent decodes.
echo "$want" > "$stamp"
echo "[bootstrap] done"
