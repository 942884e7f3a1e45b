# One image for every role: `benefits serve` (API), `benefits worker` (stream), `benefits train`.
# Settings come from BENEFITS_* environment variables (see README "Settings").
FROM python:3.11-slim AS build
WORKDIR /app
COPY pyproject.toml README.md ./
COPY benefits ./benefits
COPY features ./features
COPY infra ./infra
COPY stream ./stream
COPY service ./service
COPY training ./training
COPY harness ./harness
COPY benchmarks ./benchmarks
RUN python -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 benefits
COPY --from=build /opt/venv /opt/venv
ENV PATH="/opt/venv/bin:$PATH" \
    PYTHONUNBUFFERED=1 \
    BENEFITS_ENVIRONMENT=prod \
    BENEFITS_HOST=0.0.0.0 \
    BENEFITS_PORT=8000 \
    BENEFITS_REGISTRY_DIR=/models
USER benefits
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=2s CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz').status==200 else 1)"
CMD ["benefits", "serve"]
