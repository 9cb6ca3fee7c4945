# CPU image of the ticket-classification service: the serving install only (onnxruntime,
# tokenizers, Flask, gunicorn, scipy; no torch). The model bundle is not inside: mount it at
# /model, or bake it into a derived image (docs/service.md, "Docker").
#
#   docker build -t ticket-classifier:0.1.0 .
#   docker run --rm -p 8000:8000 -v "$PWD/runs/model:/model:ro" ticket-classifier:0.1.0
#
# That is bare gunicorn: for development, or behind a load balancer that buffers requests. Where
# callers you do not control reach it, run it behind nginx: deploy/compose.yaml (docs/service.md,
# "Slow clients: nginx in front").
#
# Any glibc-based (Debian, Ubuntu) Python 3.10+ image with pip and useradd will do as the base, e.g.
# a mirror of python:3.11-slim: docker build --build-arg PYTHON_IMAGE=registry.example/python:3.11-slim .
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TOKENIZERS_PARALLELISM=false \
    TICKETCLF_BUNDLE=/model

WORKDIR /src
COPY pyproject.toml README.md ./
COPY classifier/ classifier/
COPY service/ service/
# The base install is the serving side; [serve] names it. Training needs [train] (torch): not here.
RUN pip install ".[serve]" && rm -rf /src

RUN useradd --system --uid 10001 --no-create-home ticketclf
USER 10001
WORKDIR /tmp

EXPOSE 8000
# Workers default to the CPUs the container may use (its cgroup quota included); set
# TICKETCLF_WORKERS to override. TICKETCLF_API_KEYS turns authentication on.
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2)"]
CMD ["ticketclf", "serve", "--host", "0.0.0.0", "--port", "8000"]
