# One image for every pod of k8s/: the Prefect server, Dask scheduler and workers, Ray head and
# workers, and the example Job all run the same scalegroups, Prefect, Dask and Ray.
#   docker build -t scalegroups:0.1.0 .
# k8s/ runs it as uid/gid 10001 (the user made here) with a read-only root filesystem: what the
# programs write goes to emptyDir volumes at /tmp, PREFECT_HOME (/var/lib/prefect) and RAY_TMPDIR
# (/var/lib/ray). The folders exist here too, for `docker run` without those volumes.
FROM python:3.11-slim

RUN groupadd --gid 10001 app && useradd --create-home --uid 10001 --gid 10001 app \
    && mkdir -p /var/lib/prefect /var/lib/ray && chown app:app /var/lib/prefect /var/lib/ray
WORKDIR /app
COPY pyproject.toml README.md ./
COPY scalegroups ./scalegroups
COPY clusters ./clusters
COPY examples ./examples
RUN pip install --no-cache-dir ".[all]"   # code stays root-owned: the app user only reads it

ENV PREFECT_HOME=/var/lib/prefect \
    RAY_TMPDIR=/var/lib/ray \
    PREFECT_SERVER_ANALYTICS_ENABLED=false
USER 10001:10001
CMD ["scalegroups", "info"]
