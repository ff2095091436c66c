# coordd daemon image. Build: docker build -t coordd .
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY server ./server
COPY clients ./clients
RUN pip install . && useradd --system --home /data coordd && mkdir -p /data /keys && chown coordd /data /keys
USER coordd
ENV COORDD_DATA_DIR=/data COORDD_LISTEN=0.0.0.0:50051 COORDD_LOG_FORMAT=json
EXPOSE 50051 9100
VOLUME ["/data"]
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import grpc,sys; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; c=grpc.insecure_channel('127.0.0.1:50051'); sys.exit(0 if g.HealthStub(c).Check(h.HealthCheckRequest(), timeout=2).status==1 else 1)"
ENTRYPOINT ["coordd"]
CMD ["serve"]
