# paddle-ab, CPU: the router and Paddle Serving nodes in one image (no model inside).
#   docker build -t registry.example.com/paddle-ab:latest .
#   docker run IMAGE router            |  docker run -v /srv/models:/models:ro IMAGE serving \
#        --model /models/sentiment_v1 --http-port 18080
# .venv is built by scripts/setup.sh, the same script the tests and a bare node use.

FROM python:3.9-slim-bookworm AS build
WORKDIR /opt/paddle-ab
COPY requirements.txt constraints.txt ./
COPY scripts/setup.sh scripts/setup.sh
RUN PYTHON=/usr/local/bin/python3.9 scripts/setup.sh \
    && find .venv -name __pycache__ -type d -prune -exec rm -rf {} +

FROM python:3.9-slim-bookworm
# libgomp1: Paddle's CPU kernels (OpenMP); the slim base does not have it.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 paddle-ab \
    && useradd --system --uid 10001 --gid paddle-ab --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin paddle-ab \
    && mkdir -p /models /etc/paddle-ab /var/lib/paddle-ab /var/log/paddle-ab \
    && chown paddle-ab:paddle-ab /var/lib/paddle-ab /var/log/paddle-ab
WORKDIR /opt/paddle-ab
COPY --from=build /opt/paddle-ab/.venv .venv
COPY requirements.txt constraints.txt pyproject.toml experiments.yaml ./
COPY router router
COPY serving serving
COPY analysis analysis
COPY scripts scripts
COPY deploy deploy
COPY deploy/docker/entrypoint.sh /usr/local/bin/paddle-ab
ENV PATH=/opt/paddle-ab/.venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
USER 10001:10001
# router (registry's router.port), then the demo registry's two Paddle Serving endpoints
EXPOSE 8080 18080 18081
ENTRYPOINT ["/usr/local/bin/paddle-ab"]
CMD ["router"]
