# syntax=docker/dockerfile:1
#
# One image for every Twinkle Commons process; the command picks the process:
#   twinkle-scheduler serve | dispatch | migrate | up,   twinkle-worker,   twinkle-submit
#
#   docker build -t twinkle:0.1.0 .                                               # CPU torch: API, dispatcher
#   docker build -t twinkle:0.1.0-cuda --build-arg TORCH_VARIANT=cuda \
#                --build-arg EXTRAS=postgres,ray,gpu .                            # CUDA torch: GPU workers (gpu: NVML samples)
#   docker run --rm -p 8000:8000 twinkle:0.1.0 twinkle-scheduler up               # the embedded stack
#
# The Helm chart (helm/twinkle) runs the CPU tag for the API and dispatcher and the "-cuda" tag for workers.

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
# cpu: the CPU-only torch build (small; the API and dispatcher never touch a GPU).
# cuda: the default Linux torch wheel, which bundles the CUDA runtime; the node only needs the NVIDIA driver.
ARG TORCH_VARIANT=cpu
ARG TORCH_VERSION=2.13.0
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
# extras from pyproject.toml: postgres for the job database, ray for workers that run Ray-mode scripts
ARG EXTRAS=postgres
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/twinkle/bin:$PATH
RUN python -m venv /opt/twinkle
# torch goes in first, from the build's own index, so the project's "torch" requirement is already met
# and pip never swaps in the other build.
RUN case "$TORCH_VARIANT" in \
      cpu)  pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_CPU_INDEX}" ;; \
      cuda) pip install "torch==${TORCH_VERSION}" ;; \
      *)    echo "TORCH_VARIANT must be cpu or cuda, got '${TORCH_VARIANT}'" >&2; exit 1 ;; \
    esac
WORKDIR /src
COPY pyproject.toml README.md ./
COPY twinkle ./twinkle
COPY twinkle_client ./twinkle_client
COPY twinkle_agentic ./twinkle_agentic
COPY contract ./contract
COPY scheduler ./scheduler
COPY worker ./worker
COPY webui ./webui
COPY submit ./submit
RUN pip install ".[${EXTRAS}]" \
    && python -c "import twinkle, scheduler, worker, webui, submit"

FROM python:${PYTHON_VERSION}-slim-bookworm
# tini is PID 1: it forwards SIGTERM and reaps the orphans a training job's processes can leave behind.
# bubblewrap: the worker runs every job in it (needs user namespaces in the pod: see docs/deploy.md).
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini bubblewrap \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 twinkle \
    && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/twinkle --shell /usr/sbin/nologin twinkle
COPY --from=build /opt/twinkle /opt/twinkle
ENV PATH=/opt/twinkle/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TWINKLE_SCHEDULER_HOST=0.0.0.0
USER 10001:10001
WORKDIR /home/twinkle
# 8000: the API (twinkle-scheduler serve); 8081: a worker's /healthz
EXPOSE 8000 8081
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["twinkle-scheduler", "serve"]
