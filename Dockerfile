# One image for every pod of k8s/: the Prefect server, Dask scheduler and workers, Ray head and
# workers, and the example Job all run the same scalegroups, Prefect, Dask and Ray.
#   docker build -t scalegroups:0.1.0 .
FROM python:3.11-slim

RUN useradd --create-home --uid 1000 app
WORKDIR /app
COPY pyproject.toml README.md ./
COPY scalegroups ./scalegroups
COPY clusters ./clusters
COPY examples ./examples
RUN pip install --no-cache-dir ".[all]" && chown -R app:app /app

ENV PREFECT_HOME=/home/app/.prefect \
    PREFECT_SERVER_ANALYTICS_ENABLED=false
USER 1000
CMD ["scalegroups", "info"]
