# The orchestrator image: the Ray head and workers of every TrainingJob run it, and so does the
# operator (`orchestrator operator`, the default command). It cannot be built in this repository's
# CI (no Docker engine); keep it plain.
#
#   docker build -t orchestrator:0.1.0 .                                    # CPU torch (default)
#   docker build -t orchestrator:0.1.0-cu124 \
#     --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124 .      # CUDA torch for GPU pools
#
# TPU pools run the same image (Ray detects the TPU chips; the built-in models train with torch on
# the host CPUs unless your entrypoint uses torch_xla or JAX, which you add to your own image).
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
# tensorflow (with tf_keras) runs `framework: tensorflow` jobs; build with --build-arg EXTRAS=kubernetes
# for a torch-only image about 1.5 GB smaller.
ARG EXTRAS=kubernetes,tensorflow

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    ORCHESTRATOR_HOME=/tmp/orchestrator

# KubeRay's health probes call wget inside Ray pods; bash runs its `ray start` command line.
RUN apt-get update \
 && apt-get install -y --no-install-recommends wget bash \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 1000 --user-group ray

WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY orchestrator ./orchestrator
# torch first, from the chosen index (CPU by default), then the project with the pinned versions.
RUN pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}" \
 && pip install -c constraints.txt ".[${EXTRAS}]"
# Specs and examples, so that relative paths in specs (resolved against /app) find them.
COPY jobs ./jobs
COPY examples ./examples

USER 1000:1000
EXPOSE 8080 8081
ENTRYPOINT ["orchestrator"]
CMD ["operator"]
