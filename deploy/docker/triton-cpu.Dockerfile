# syntax=docker/dockerfile:1
# Our CPU Triton image (the `cpu` profile of docker-compose.yml, helm/radreport/ci/cpu-values.yaml):
# the real tritonserver 2.51 with its Python backend, extracted from the PyPI wheel
# nvidia-pytriton 0.7.0 by deploy/triton/install_cpu_server.sh, the backend's own Python
# environment (numpy<2, see deploy/triton/README.md; installed from its hashed lock) with the radreport package in it, and
# model_repository/ at /models.
#   docker build -f deploy/docker/triton-cpu.Dockerfile -t radreport-triton-cpu:0.1.0 .
# GPU deployments use NVIDIA's nvcr.io/nvidia/tritonserver image instead.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# pip trusts the system store, where a build behind a TLS-inspecting proxy mounts its CA bundle.
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY deploy/triton/install_cpu_server.sh deploy/triton/requirements-cpu.txt deploy/triton/
# The binary, its libraries and the stub for this Python; DEST/env from requirements-cpu.txt.
RUN PYTHON=python bash deploy/triton/install_cpu_server.sh /opt/tritonserver
COPY pyproject.toml README.md ./
COPY radreport ./radreport
COPY services ./services
# radreport without its dependencies: model.py needs only what requirements-cpu.txt pins, and
# the runtime dependencies would bring NumPy 2, which the backend stub misreads.
RUN /opt/tritonserver/env/bin/python -m pip install --no-deps . \
 && /opt/tritonserver/env/bin/python -c "import numpy, radreport.model.report; assert int(numpy.__version__.split('.')[0]) < 2" \
 && /opt/tritonserver/env/bin/python -m pip uninstall -y setuptools pip

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="radreport-triton-cpu" \
      org.opencontainers.image.description="tritonserver 2.51 (CPU) with the radreport model repository" \
      org.opencontainers.image.licenses="Proprietary"
RUN groupadd --system --gid 10001 triton \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin triton
COPY --from=build /opt/tritonserver /opt/tritonserver
COPY model_repository /models
# The stub loads this interpreter's libpython (/usr/local/lib); model.py puts PYTHONPATH first.
ENV PATH=/opt/tritonserver/pytriton/tritonserver/bin:$PATH \
    LD_LIBRARY_PATH=/usr/local/lib \
    PYTHONPATH=/opt/tritonserver/env/lib/python3.11/site-packages \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp
USER 10001:10001
WORKDIR /tmp
# HTTP, gRPC, metrics
EXPOSE 8000 8001 8002
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=4)"]
ENTRYPOINT ["tritonserver", "--backend-directory=/opt/tritonserver/pytriton/tritonserver/backends"]
CMD ["--model-repository=/models", "--http-port=8000", "--grpc-port=8001", "--metrics-port=8002", \
     "--exit-timeout-secs=10"]
