# vidseek image (CPU). For CUDA workers, build FROM an nvidia/cuda runtime image and
# `pip install faiss-gpu-cu12` in place of faiss-cpu.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY models models
COPY indexer indexer
COPY search search
COPY migrations migrations
RUN pip install .
EXPOSE 8000
CMD ["vidseek", "serve", "--host", "0.0.0.0"]
