# The recommendation service. Artifacts are mounted (or baked) at /srv/models; no torch needed.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    MODEL_DIR=/srv/models \
    LOG_SPOOL_DIR=/srv/spool \
    PROMETHEUS_MULTIPROC_DIR=/tmp/prometheus
WORKDIR /srv

COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

# the service runs as an unprivileged user that can write only its spool and the metrics of its workers;
# the code and the artifacts stay root's, read-only to it
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin app \
    && mkdir -p /srv/spool /tmp/prometheus && chown app /srv/spool /tmp/prometheus
COPY app ./app
COPY models ./models
USER app

EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health')"
CMD ["python", "-m", "app", "--host", "0.0.0.0", "--port", "8000", "--workers", "2"]
