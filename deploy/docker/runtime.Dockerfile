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
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# A virtualenv without pip: the base image's pip installs into it (--python), so the final
# image carries no package installer of its own.
RUN python -m venv --without-pip /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY radreport ./radreport
COPY services ./services
COPY proto ./proto
# The gRPC stubs are generated here (grpcio-tools only in this stage), then packaged.
RUN python -m pip install "grpcio-tools>=1.66" && python -m radreport.proto_build
# `.` alone: the base dependencies. Fails the build if PyTorch came in anyway.
RUN python -m pip --python /opt/venv/bin/python install . \
 && /opt/venv/bin/python -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)"

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
