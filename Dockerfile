# chatbot: one container for every platform. Runs as a non-root user; the root filesystem can be
# read-only (state lives in Redis; the embedded Redis and caches write only under /data and /tmp).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY core ./core
COPY adapters ./adapters
COPY bots ./bots
COPY stores ./stores
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CHATBOT_HOST=0.0.0.0 \
    CHATBOT_PORT=8080 \
    CHATBOT_DATA_DIR=/data
COPY --from=build /install /usr/local
RUN useradd --create-home --uid 10001 chatbot && mkdir -p /data && chown chatbot /data
WORKDIR /app
COPY config.yaml ./config.yaml
USER chatbot
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ.get(\"CHATBOT_PORT\", \"8080\")}/healthz', timeout=4)"
CMD ["chatbot", "run", "--config", "/app/config.yaml"]
