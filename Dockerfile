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
# Layers from the least to the most often changed, so that a code change rebuilds only the last
# ones: torch, then every other dependency (read from pyproject.toml, pinned by constraints.txt),
# then the code, installed without its dependencies.
# torch first (it depends on the build arguments only), from the chosen index (CPU by default).
RUN pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"
COPY pyproject.toml constraints.txt ./
# The project's dependencies and those of the chosen extras, without the project itself.
RUN python -c "import sys, tomllib; project = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
extras = [name for name in sys.argv[1].split(',') if name]; \
print('\n'.join(project['dependencies'] + [d for name in extras for d in project['optional-dependencies'][name]]))" \
      "${EXTRAS}" > /tmp/requirements.txt \
 && pip install -c constraints.txt -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt
# Specs, training functions and dashboards: in /app, so that relative paths in specs (resolved
# against /app) find them, and in the package (setup.py copies them), for `orchestrator examples`.
COPY jobs ./jobs
COPY examples ./examples
COPY dashboards ./dashboards
COPY setup.py MANIFEST.in README.md ./
COPY orchestrator ./orchestrator
RUN pip install --no-deps . && rm -rf build *.egg-info

USER 1000:1000
EXPOSE 8080 8081
ENTRYPOINT ["orchestrator"]
CMD ["operator"]
