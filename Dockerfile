# distlb with its command line, for docker-compose.yml.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY distlb ./distlb
COPY lua ./lua
RUN pip install --no-cache-dir .
CMD ["distlb", "--help"]
