# vidseek images. Two targets:
#   cpu (default): PyTorch CPU wheels, faiss-cpu           docker build -t vidseek .
#   gpu:           CUDA PyTorch (the PyPI wheels), GPU FAISS docker build --target gpu -t vidseek:gpu .
# Both run any vidseek command: serve (gunicorn), worker, beat, ingest, index verify ...

FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY models models
COPY indexer indexer
COPY search search
COPY migrations migrations
EXPOSE 8000
CMD ["vidseek", "serve", "--host", "0.0.0.0"]

FROM base AS gpu
# PyPI's Linux torch wheels bundle CUDA; the host needs the NVIDIA driver and container toolkit.
# faiss-gpu provides the same `faiss` module as faiss-cpu, with GPU indexes: vidseek moves flat
# and IVF indexes to the GPU when one is visible (search/vector_index.py).
RUN pip install . && pip uninstall -y faiss-cpu && pip install "faiss-gpu>=1.15,<2"

FROM base AS cpu
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu "torch==2.14.1+cpu" "torchvision==0.29.1+cpu" \
 && pip install ".[onnx]"
