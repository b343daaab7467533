# statsig-relay in a container: non-root, spool on a volume, health-checked on /healthz.
#   docker build -t statsig-relay .
#   docker run -v relay-data:/var/lib/statsig-relay -p 127.0.0.1:8080:8080 statsig-relay
# The image runs config.example.yaml unless RELAY_CONFIG names another file (mount it read-only,
# e.g. -v ./relay.yaml:/etc/statsig-relay/relay.yaml:ro -e RELAY_CONFIG=/etc/statsig-relay/relay.yaml).
# deploy/compose.yaml runs two replicas on Redis.

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY relay ./relay
# Wheels of the relay and its dependencies (with the redis extra), built once.
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[redis]'

FROM python:3.11-slim
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/statsig-relay \
        --shell /usr/sbin/nologin relay \
    && mkdir -p /var/lib/statsig-relay /etc/statsig-relay \
    && chown relay:relay /var/lib/statsig-relay && chmod 0700 /var/lib/statsig-relay
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links=/wheels 'statsig-relay[redis]' \
    && rm -rf /wheels
COPY config.example.yaml /etc/statsig-relay/config.yaml
# config.example.yaml reads these: the spool under the volume, listeners reachable from the
# host (publish 9102 to a private network only: it serves /status and /metrics).
ENV STATE_DIRECTORY=/var/lib/statsig-relay \
    RELAY_LISTEN=0.0.0.0:8080 \
    RELAY_ADMIN_LISTEN=0.0.0.0:9102 \
    RELAY_CONFIG=/etc/statsig-relay/config.yaml \
    PYTHONUNBUFFERED=1
VOLUME ["/var/lib/statsig-relay"]
WORKDIR /var/lib/statsig-relay
USER relay:relay
EXPOSE 8080 9102
# No curl in the slim image: Python asks /healthz (200 while every delivery loop runs).
HEALTHCHECK --interval=15s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9102/healthz', timeout=3)"]
# SIGTERM drains within server.shutdown_grace (8 s by default), which fits Docker's default 10 s
# stop timeout; a longer grace needs `docker stop --stop-timeout` (compose: stop_grace_period).
STOPSIGNAL SIGTERM
ENTRYPOINT ["statsig-relay"]
CMD ["run"]
