# The service image: `aijobs serve` by default; `aijobs api` or `aijobs worker` to scale out.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    AIJOBS_HOST=0.0.0.0 \
    AIJOBS_DATA_DIR=/var/lib/aijobs

RUN groupadd --system aijobs && useradd --system --gid aijobs --home-dir /app aijobs \
    && mkdir -p /var/lib/aijobs && chown aijobs:aijobs /var/lib/aijobs

WORKDIR /app
COPY pyproject.toml README.md ./
COPY service ./service
COPY sql ./sql
RUN pip install .

USER aijobs
EXPOSE 8080
CMD ["aijobs", "serve"]
