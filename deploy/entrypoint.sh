#!/bin/sh
# The image's entrypoint. The image runs as the non-root user `grpo` (Dockerfile: USER grpo), and then this only execs
# the command. Started as root (docker-compose.yml's api and workers say `user: root`), it does the one step that needs
# root and runs the command as `grpo` all the same:
#   1. on cgroup v2, `grpo sandbox-cgroup` delegates /sys/fs/cgroup/grpo-sandbox to grpo and puts this process in its
#      leaf `service` (api/sandbox_setup.py says why both), so that a service that is not root still gives each reward
#      sandbox a cgroup of its own (memory, processes and CPU bounded by the kernel, grpo_core/cgroups.py); on cgroup v1
#      it says that nothing can be done (a non-root service gets no per-sandbox cgroup there);
#   2. setpriv execs the command as uid and gid grpo with grpo's groups only, every capability set emptied (the
#      bounding set too) and no_new_privs set: neither the service nor anything it starts can become root again, not
#      even through a setuid binary. bubblewrap needs none of that: it gets its capabilities in its own user namespace.
# Why not an image that starts as root and always drops: whoever runs the image by hand gets a non-root container,
# and root is asked for where the cgroup step is wanted, next to the privileges it needs (docker-compose.yml).
# Root stays only in the container's init (docker's --init, pid 1) and healthcheck, and in `docker compose exec`
# sessions unless they say `--user grpo`.
set -eu
if [ "$(id -u)" != 0 ]; then
    exec "$@"
fi
if [ -e /sys/fs/cgroup/cgroup.controllers ] && [ ! -w /sys/fs/cgroup ]; then
    # A read-only cgroup mount: Docker before 28.0 has no writable-cgroups option. Where the container was given
    # CAP_SYS_ADMIN instead (cap_add, docker-compose.yml says when), make this mount writable; without it this
    # fails quietly and sandbox-cgroup says what is wrong.
    mount -o remount,bind,rw /sys/fs/cgroup 2>/dev/null || true
fi
grpo sandbox-cgroup --user grpo --join $$ ||
    echo "grpo-entrypoint: going on without a cgroup for reward sandboxes: tenant reward code is refused unless" \
        "GRPO_REWARD_ALLOW_WITHOUT_CGROUP=1" >&2
export HOME=/home/grpo USER=grpo LOGNAME=grpo
exec setpriv --reuid=grpo --regid=grpo --init-groups --inh-caps=-all --bounding-set=-all --no-new-privs -- "$@"
