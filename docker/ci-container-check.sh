#!/usr/bin/env bash
# CI container check: build the CPU stage image and run `make smoke` in it, proving the image
# runs the pipeline. Runs only where ../shared/tools/podman-env.sh exists (CI here: no Docker
# engine, no registry; the script installs podman and provides a local python:3.11-slim).
# The CUDA variant (the default BASE) cannot be pulled here and is not built.
set -euo pipefail
cd "$(dirname "$0")/.."
PODMAN_ENV=../shared/tools/podman-env.sh
if [ ! -f "$PODMAN_ENV" ]; then
  echo "container check: skipped ($PODMAN_ENV not found)"
  exit 0
fi
BUILD_TIMEOUT=${BUILD_TIMEOUT:-840}   # guards only: on an idle 2-core machine the check takes ~10-15 min
SMOKE_TIMEOUT=${SMOKE_TIMEOUT:-600}
TAG=localhost/alignflow-stage:ci-cpu
t0=$(date +%s)

# shellcheck source=/dev/null
source "$PODMAN_ENV"

# The local CPU torch wheel: the image installs docker/wheels/*.whl first (no CUDA downloads).
PIP=.venv/bin/pip
[ -x "$PIP" ] || PIP=pip
mkdir -p docker/wheels
if ! compgen -G "docker/wheels/torch-2.13.0*.whl" >/dev/null; then
  "$PIP" download -q torch==2.13.0 --no-deps -d docker/wheels
fi

t1=$(date +%s)
timeout "$BUILD_TIMEOUT" podman build -q --format docker -f docker/stage.Dockerfile --build-arg BASE=python:3.11-slim -t "$TAG" . >/dev/null
t2=$(date +%s)
size=$(podman image inspect "$TAG" --format '{{.Size}}')
echo "container check: built $TAG in $((t2 - t1)) s, $((size / 1000000)) MB"

# Offline (--network=none): the smoke profile needs nothing from outside the image.
timeout "$SMOKE_TIMEOUT" podman run --rm --network=none --shm-size=1g "$TAG" \
  bash -c 'make smoke && test -f .smoke/dvc.lock && ls .smoke/metrics'
t3=$(date +%s)
echo "container check: make smoke in the image passed in $((t3 - t2)) s (total $((t3 - t0)) s)"
