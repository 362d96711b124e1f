# engine-fleet-exporter image: `fleet-exporter serve|check|demo ...` as a non-root user.
# The demo without --dsn needs PostgreSQL server binaries, which this image does not carry;
# docker-compose.yml runs the simulator against its postgres service instead.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY exporter ./exporter
RUN pip install . \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin fleet \
    && install -d -o fleet -g fleet /var/lib/fleet-exporter

USER 10001
WORKDIR /
EXPOSE 9480
ENTRYPOINT ["fleet-exporter"]
CMD ["serve", "--config", "/etc/fleet-exporter/exporter.yaml"]
