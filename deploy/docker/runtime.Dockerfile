# syntax=docker/dockerfile:1
# The radreport runtime image: the gateway, the DICOM gateway and the four Celery workers all
# run from this one image, one service per container, picked by the command:
#   python -m services.gateway | services.dicom | services.preprocess | services.inference
#   | services.grounding | services.fhir
# It holds the project's base dependencies only: never the `train` extra (PyTorch) nor `dev`.
#   docker build -f deploy/docker/runtime.Dockerfile -t radreport:0.1.0 .
# Writable paths: /data (the blob volume shared by every service) and /tmp; the root file
# system can be mounted read-only.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# pip trusts the system store: a build behind a TLS-inspecting proxy mounts its CA bundle there
# (deploy/containers/build.sh --trust-store); nothing of it stays in the image.
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Dependencies first, from the hashed lock files (deploy/requirements/lock.sh), so a change to
# the code alone reuses this layer. /opt/venv becomes the image's; /opt/grpc-build only runs
# grpcio-tools below and is left behind with this stage.
COPY deploy/requirements/runtime.txt deploy/requirements/grpc-build.txt deploy/requirements/
RUN python -m venv /opt/venv \
 && python -m venv /opt/grpc-build \
 && /opt/venv/bin/python -m pip install --require-hashes -r deploy/requirements/runtime.txt \
 && /opt/grpc-build/bin/python -m pip install --require-hashes -r deploy/requirements/grpc-build.txt
COPY pyproject.toml README.md ./
COPY radreport ./radreport
COPY services ./services
COPY proto ./proto
RUN /opt/grpc-build/bin/python -m radreport.proto_build
# The project without dependencies (all locked above; `pip check` proves the lock complete).
# Fails the build if PyTorch came in anyway. The image keeps no package installer.
RUN /opt/venv/bin/python -m pip install --no-deps . \
 && /opt/venv/bin/python -m pip check \
 && /opt/venv/bin/python -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)" \
 && /opt/venv/bin/python -m pip uninstall -y setuptools pip

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="radreport" \
      org.opencontainers.image.description="radreport services: gateway, DICOM gateway, Celery workers (no PyTorch)" \
      org.opencontainers.image.licenses="Proprietary"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    RADREPORT_ENVIRONMENT=production \
    RADREPORT_DATA_DIR=/data \
    RADREPORT_BLOB_ROOT=/data/blobs \
    RADREPORT_GATEWAY_IMAGE_ROOT=/data/images \
    RADREPORT_GATEWAY_HOST=0.0.0.0 \
    RADREPORT_GATEWAY_GRPC_HOST=0.0.0.0 \
    RADREPORT_DICOM_HOST=0.0.0.0 \
    RADREPORT_DICOM_METRICS_HOST=0.0.0.0 \
    RADREPORT_WORKER_METRICS_HOST=0.0.0.0 \
    RADREPORT_WORKER_METRICS_PORT=9100
# uid/gid 10001; /data owned by it, so a fresh named volume mounted there is writable.
RUN groupadd --system --gid 10001 radreport \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin radreport \
 && mkdir -p /data \
 && chown 10001:10001 /data
COPY --from=build /opt/venv /opt/venv
COPY --chmod=0755 deploy/docker/entrypoint.sh deploy/docker/healthcheck.py /opt/radreport/
WORKDIR /data
USER 10001:10001
# gateway HTTP, DICOM, worker metrics, DICOM metrics
EXPOSE 8080 50051 11112 9100 9102
# Which service this container runs is read from its command (or RADREPORT_SERVICE).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "/opt/radreport/healthcheck.py"]
ENTRYPOINT ["/opt/radreport/entrypoint.sh"]
CMD ["python", "-m", "services.gateway"]
