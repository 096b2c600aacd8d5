"""The `grpo` command.

grpo serve [--data-dir DIR] [--port N]   API + one supervised Celery worker, SQLite, file-based broker
grpo api / grpo worker                   the parts alone, for the scaled-out layout (PostgreSQL, Redis)
grpo migrate                             apply database migrations
grpo keys create --tenant NAME           print a new API key (once; only its hash is stored)
grpo tenants set NAME [--weight W] [--max-running N|default] [--max-queued N|default]
                                         a tenant's share of the workers and its own caps on jobs (fair turns)
grpo tenants list                        each tenant's weight, caps in force, and jobs running and queued
grpo usage [--tenant NAME] [--start YYYY-MM-DD] [--end YYYY-MM-DD]
                                         what tenants used (one, or every one), by day and by job (GET /v1/usage)
grpo train CONFIG.yaml [--resume] [--device auto|cpu|cuda|cuda:N]   run a job locally without the service
grpo models add NAME SOURCE [...]        register a base model (a checkpoint folder or hub id) in the models file
grpo models list [--file [PATH]]         the models a job may name: the API's (--file: the local models file's)
grpo sandbox-cgroup [--user U] [--join PID]   as root, at a container's start: on cgroup v2, a cgroup folder for
                                         reward sandboxes, delegated to the non-root user the service runs as

and the client verbs, which talk to a running service (grpo_client/cli.py: options, output, exit status):
grpo datasets upload FILE | list | get ID
grpo jobs create --model M --dataset D --reward NAME[:WEIGHT] --set KEY=VALUE [--watch]
grpo jobs list | get ID | cancel ID | watch ID | download ID [--step N] [--output PATH]
grpo rewards list
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from grpo_client import cli as client_cli


def _use_data_dir(data_dir: Path | None) -> None:
    # Children (the worker) inherit the environment, so every process agrees on one absolute data folder.
    if data_dir is not None:
        os.environ["GRPO_DATA_DIR"] = str(data_dir.resolve())
        from service_core.settings import get_settings

        get_settings.cache_clear()


def worker_hardware(setting: str, device: str = "auto") -> str:
    """cpu or gpu for GRPO_WORKER_HARDWARE. auto follows GRPO_DEVICE (cpu, or cuda...), and where that is auto too
    asks the NVIDIA driver (no torch import: `grpo serve` stays light), which lists one folder per GPU it drives."""
    if setting != "auto":
        return setting
    if device != "auto":
        return "cpu" if device == "cpu" else "gpu"
    gpus = Path("/proc/driver/nvidia/gpus")
    return "gpu" if gpus.is_dir() and any(gpus.iterdir()) else "cpu"


def gpu_count() -> int:
    """GPUs the NVIDIA driver drives on this machine (one folder each), without importing torch; 0 without one."""
    gpus = Path("/proc/driver/nvidia/gpus")
    return sum(1 for _ in gpus.iterdir()) if gpus.is_dir() else 0


def worker_command(settings, gpus: int | None = None) -> list[str]:
    # Solo pool: the job runs in the worker process itself, one at a time; no forking of a process holding torch.
    # Queues by hardware class (service_core/queue.py): a CPU worker never takes a GPU job, nor a GPU worker a job needing
    # more GPUs than it has (gpus: the driver's count unless given).
    from service_core.queue import worker_queues

    hardware = worker_hardware(settings.worker_hardware, settings.device)
    gpus = gpu_count() if gpus is None else gpus
    queues = ",".join(worker_queues(hardware, settings.queue, gpus))
    return [
        sys.executable, "-m", "celery", "-A", "worker.app", "worker",
        "--pool", "solo", "--concurrency", "1", "--queues", queues,
        "--without-gossip", "--without-mingle", "--loglevel", "INFO",
    ]  # fmt: skip


def models_command(args) -> int:
    """`grpo models add` and `grpo models list`; a problem is printed as one line and exits 1."""
    from grpo_core.catalog import (
        ModelsFileError,
        add_to_models_file,
        default_target_modules,
        load_catalog,
        load_models_file,
    )
    from service_core.settings import get_settings

    models_file = args.models_file or get_settings().models_file
    try:
        if args.models_command == "list":
            for name, model in load_catalog(models_file).items():
                template = "chat template" if model.has_chat_template else "no chat template"
                print(
                    f"{name}\t{model.parameters:,} parameters\t{model.context_length} tokens\t{template}\t"
                    f"{model.source or 'built-in'}\t{model.description}"
                )
            return 0
        if models_file is None:
            raise ValueError("no models file: set GRPO_MODELS_FILE (the API and the workers read it) or --models-file")
        if models_file.exists():
            load_models_file(models_file)  # refuse early, before the checkpoint is measured
        model = _describe(args)
        add_to_models_file(models_file, args.name, model, replace=args.replace)
    except (ModelsFileError, ValueError, OSError) as error:
        print(f"grpo models {args.models_command}: {error}", file=sys.stderr)
        return 1
    print(
        f"{args.name}: {model.parameters:,} parameters, context {model.context_length} tokens, "
        f"{'a' if model.has_chat_template else 'no'} chat template, LoRA targets "
        f"{' '.join(default_target_modules(model))}; written to {models_file}"
    )
    return 0


def _cap(value: str) -> int | str:
    """A cap on the command line: a whole number, or `default` for the service's setting."""
    from api.services.tenants import DEFAULT
    from service_core.models import MAX_INT

    if value == DEFAULT:
        return value
    try:
        number = int(value)
    except ValueError:
        number = 0
    if not 1 <= number <= MAX_INT:
        raise argparse.ArgumentTypeError(f"a whole number from 1 to {MAX_INT}, or {DEFAULT}, not {value!r}")
    return number


def tenants_command(args) -> int:
    """`grpo tenants set` and `grpo tenants list`; a problem is printed as one line and exits 1."""
    from api.services import InvalidInput, NotFound
    from api.services import tenants as tenants_service
    from service_core.db import session_scope
    from service_core.settings import get_settings

    settings = get_settings()
    try:
        with session_scope() as session:
            if args.tenants_command == "set":
                tenants_service.set_tenant(
                    session,
                    name=args.name,
                    weight=args.weight,
                    max_running=args.max_running,
                    max_queued=args.max_queued,
                )
            shares = tenants_service.list_tenants(session, settings)
    except (NotFound, InvalidInput) as error:
        print(f"grpo tenants {args.tenants_command}: {error}", file=sys.stderr)
        return 1
    if args.tenants_command == "set":
        shares = [share for share in shares if share.name == args.name]
    else:
        print("tenant\tweight\tmax running\tmax queued\trunning\tqueued")

    def cap(own: int | None, limit: int, setting: str) -> str:
        return str(own) if own is not None else f"{limit} ({setting})"

    for share in shares:
        print(
            f"{share.name}\t{share.weight:g}\t"
            f"{cap(share.max_running_jobs, share.running_limit, 'GRPO_MAX_RUNNING_JOBS_PER_TENANT')}\t"
            f"{cap(share.max_queued_jobs, share.queued_limit, 'GRPO_MAX_QUEUED_JOBS_PER_TENANT')}\t"
            f"{share.running}\t{share.queued}"
        )
    return 0


def _day(value: str):
    from datetime import date

    try:
        return date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a day as YYYY-MM-DD, not {value!r}") from None


USAGE_HEADER = "compute s\tcpu s\tgpu s\ttokens sampled\ttokens trained\treward calls\treward s"


def _usage_line(figures) -> str:
    by_hardware = figures.compute_seconds_by_hardware
    return (
        f"{figures.compute_seconds:.1f}\t{by_hardware.get('cpu', 0.0):.1f}\t{by_hardware.get('gpu', 0.0):.1f}\t"
        f"{figures.tokens_sampled}\t{figures.tokens_trained}\t{figures.reward_calls}\t{figures.reward_seconds:.1f}"
    )


def usage_command(args) -> int:
    """`grpo usage`: the operator's view of GET /v1/usage, for one tenant or every tenant with usage in the range,
    read from the database; a problem is printed as one line and exits 1."""
    from sqlalchemy import select

    from api.services import InvalidInput
    from api.services import usage as usage_service
    from service_core.db import session_scope
    from service_core.models import Tenant

    try:
        start, end = usage_service.usage_range(args.start, args.end)
        with session_scope() as session:
            if args.tenant is None:
                tenants = usage_service.tenants_with_usage(session, start=start, end=end)
            else:
                tenant_id = session.scalar(select(Tenant.id).where(Tenant.name == args.tenant))
                if tenant_id is None:
                    raise InvalidInput(f"tenant {args.tenant!r} not found")
                tenants = [(tenant_id, args.tenant)]
            reports = [
                (name, usage_service.tenant_usage(session, tenant_id=tenant_id, start=start, end=end))
                for tenant_id, name in tenants
            ]
    except InvalidInput as error:
        print(f"grpo usage: {error}", file=sys.stderr)
        return 1
    if not reports:
        print(f"no usage from {start} to {end}")
    for number, (name, usage) in enumerate(reports):
        if number:
            print()
        print(f"tenant {name}, {usage.start} to {usage.end}")
        print(f"day\t{USAGE_HEADER}")
        for day in usage.by_day:
            print(f"{day.day}\t{_usage_line(day)}")
        print(f"total\t{_usage_line(usage.totals)}")
        print(f"job\tkind\thardware\t{USAGE_HEADER}")
        for source in usage.by_job:
            print(f"{source.id}\t{source.kind}\t{source.hardware}\t{_usage_line(source)}")
        by_kind = usage.storage_bytes_by_kind
        print(
            f"storage now\t{usage.storage_bytes} bytes (datasets {by_kind['datasets']}, rewards {by_kind['rewards']}, "
            f"checkpoints {by_kind['checkpoints']})"
        )
    return 0


def sandbox_cgroup_command(args) -> int:
    """`grpo sandbox-cgroup`: the container entrypoint's one root step (deploy/entrypoint.sh), so that a service running
    as a non-root user still gives each reward sandbox its own cgroup; api/sandbox_setup.py says why each step is
    needed. That module is standard library only and reads no settings: it runs as root, before the service. A
    failure is one line naming the file and what the kernel answered, exit status 1 (the entrypoint then goes on
    without a cgroup, and tenant code is refused unless GRPO_REWARD_ALLOW_WITHOUT_CGROUP=1)."""
    from api.sandbox_setup import SetupError, delegate_cgroup

    try:
        done = delegate_cgroup(args.user, args.folder, join=args.join)
    except SetupError as error:
        print(f"grpo sandbox-cgroup: {error}", file=sys.stderr)
        return 1
    for line in done:
        print(f"grpo sandbox-cgroup: {line}")
    return 0


def _describe(args):
    """The checkpoint's catalog entry (transformers is imported here, never in the API)."""
    from grpo_core.config import LoraSettings
    from grpo_core.models import ModelLoadError, describe_checkpoint

    targets = [m for item in args.target_modules or [] for m in item.split(",") if m] or None
    template = args.chat_template.read_text(encoding="utf-8") if args.chat_template else None
    try:
        model = describe_checkpoint(
            args.source, description=args.description, target_modules=targets, chat_template=template
        )
    except ModelLoadError as error:
        raise ValueError(str(error)) from None
    missing = [m for m in LoraSettings().target_modules if m not in model.linear_modules]
    if targets is None and missing:
        raise ValueError(
            f"{args.source} has no {', '.join(missing)} layers, so the default LoRA targets do not fit: pass "
            f"--target-modules, from: {' '.join(model.linear_modules)}"
        )
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="grpo", description="GRPO fine-tuning service")
    parser.add_argument("--data-dir", type=Path, help="data folder (default ./.grpo, or $GRPO_DATA_DIR)")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("serve", "API and a worker on one machine"), ("api", "the API server alone")):
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("--host", default="127.0.0.1")
        sub.add_argument("--port", type=int, default=8000)
        sub.add_argument("--data-dir", type=Path, dest="sub_data_dir")
    commands.add_parser("worker", help="a Celery worker alone").add_argument(
        "--data-dir", type=Path, dest="sub_data_dir"
    )
    commands.add_parser("migrate", help="apply database migrations").add_argument(
        "--data-dir", type=Path, dest="sub_data_dir"
    )
    keys = commands.add_parser("keys", help="API keys").add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser("create", help="create a key for a tenant (made if new) and print it")
    create.add_argument("--tenant", required=True)
    create.add_argument("--data-dir", type=Path, dest="sub_data_dir")
    tenants = commands.add_parser("tenants", help="tenants' shares of the workers").add_subparsers(
        dest="tenants_command", required=True
    )
    share = tenants.add_parser(
        "set",
        help="set a tenant's weight (its share of the workers against a tenant of weight 1) and its own caps on "
        "running and queued jobs, in place of GRPO_MAX_RUNNING_JOBS_PER_TENANT and GRPO_MAX_QUEUED_JOBS_PER_TENANT",
    )
    share.add_argument("name", help="the tenant, as `grpo keys create --tenant` named it")
    share.add_argument("--weight", type=float, help="a positive number; 2 runs two of its jobs for another's one")
    share.add_argument("--max-running", type=_cap, help="jobs it may run at once (more wait their turn), or default")
    share.add_argument("--max-queued", type=_cap, help="jobs it may have queued (POST /v1/jobs answers 429 past it)")
    share.add_argument("--data-dir", type=Path, dest="sub_data_dir")
    tenants.add_parser("list", help="each tenant's weight, caps in force, and jobs running and queued").add_argument(
        "--data-dir", type=Path, dest="sub_data_dir"
    )
    usage = commands.add_parser(
        "usage", help="what tenants used (compute seconds by hardware, tokens, reward calls), by day and by job"
    )
    usage.add_argument("--tenant", help="one tenant, by name (default: every tenant with usage in the range)")
    usage.add_argument("--start", type=_day, help="first UTC day, YYYY-MM-DD (default: 29 days before the end)")
    usage.add_argument("--end", type=_day, help="last UTC day, included, YYYY-MM-DD (default: today)")
    usage.add_argument("--data-dir", type=Path, dest="sub_data_dir")
    train = commands.add_parser("train", help="run a training job from a YAML config, locally")
    train.add_argument("config", type=Path)
    train.add_argument("--resume", action="store_true")
    train.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    models = commands.add_parser("models", help="base models").add_subparsers(dest="models_command", required=True)
    add = models.add_parser(
        "add",
        help="measure a Hugging Face checkpoint (context, linear layers, parameters, chat template) and register it "
        "in the models file (GRPO_MODELS_FILE)",
    )
    add.add_argument("name", help="the name job specs will use")
    add.add_argument("source", help="a local checkpoint folder, or a hub id (owner/name) the workers can reach")
    add.add_argument("--description")
    add.add_argument(
        "--target-modules", nargs="+", help="default LoRA target modules (default: q_proj k_proj v_proj o_proj)"
    )
    add.add_argument("--chat-template", type=Path, help="a Jinja chat template file, replacing the tokenizer's")
    add.add_argument("--replace", action="store_true", help="replace an entry of the same name")
    add.add_argument("--models-file", type=Path, help="default: $GRPO_MODELS_FILE")
    listing = models.add_parser(
        "list", parents=[client_cli.OPTIONS], help="the models a job can name, from the API (--file: from the file)"
    )
    listing.add_argument(
        "--file",
        dest="local_models",
        type=Path,
        nargs="?",
        const=True,  # --file alone: the settings' models file
        metavar="PATH",
        help="list the built-in models and a models file's (default: $GRPO_MODELS_FILE) here, without the API",
    )
    listing.set_defaults(client_handler=client_cli.models_list, models_file=None)
    cgroup = commands.add_parser(
        "sandbox-cgroup",
        help="as root at a container's start, on cgroup v2: delegate a cgroup folder for reward sandboxes to the "
        "non-root user the service then runs as (deploy/entrypoint.sh); on cgroup v1 it says nothing is needed",
    )
    cgroup.add_argument("--user", default="grpo", help="the service's user, a name or uid (default: grpo)")
    cgroup.add_argument(
        "--folder",
        type=Path,
        help="the sandboxes' parent, directly under /sys/fs/cgroup (default: /sys/fs/cgroup/grpo-sandbox, which "
        "GRPO_SANDBOX_CGROUP=auto finds; another one must be named in GRPO_SANDBOX_CGROUP)",
    )
    cgroup.add_argument(
        "--join",
        type=int,
        metavar="PID",
        help="a process to put in FOLDER/service, where the service must run to move its sandboxes into their "
        "cgroups: the entrypoint passes its own pid, then execs the service",
    )
    client_cli.register(commands)
    args = parser.parse_args(argv)
    _use_data_dir(getattr(args, "sub_data_dir", None) or args.data_dir)
    if args.command == "models" and args.models_command == "list" and args.local_models is not None:
        args.models_file = None if args.local_models is True else args.local_models
        return models_command(args)
    if getattr(args, "client_handler", None):
        return client_cli.run(args)
    if args.command == "models":
        return models_command(args)
    if args.command == "sandbox-cgroup":
        return sandbox_cgroup_command(args)

    if args.command == "train":
        from grpo_core.cli import main as train_main

        resume = ["--resume"] if args.resume else []
        return train_main(["train", str(args.config), *resume, "--device", args.device])
    if args.command == "serve":
        from api.serve import serve
        from service_core.settings import get_settings

        return serve(host=args.host, port=args.port, worker_command=worker_command(get_settings()))
    from service_core.db import make_private_dir
    from service_core.settings import get_settings

    make_private_dir(get_settings().data_dir)  # datasets, adapters and the SQLite file: this user's alone
    if args.command == "api":
        import uvicorn

        from api.serve import server_options
        from service_core.db import run_migrations

        run_migrations()
        # The same options as serve's: a capped graceful shutdown (open event streams would otherwise hold a
        # SIGTERM until their jobs end) and no query strings in the access log.
        uvicorn.run("api.main:app", host=args.host, port=args.port, **server_options())
        return 0
    if args.command == "worker":
        # Replaced by Celery, solo pool: the job runs in this very process, which has no children of its own, so
        # whoever stops this pid (a supervisor, `grpo serve`) stops the job with it.
        os.execv(sys.executable, worker_command(get_settings()))
    from service_core.db import run_migrations, session_scope

    run_migrations()
    if args.command == "keys":
        from api.services import keys as keys_service

        with session_scope() as session:
            key = keys_service.create_api_key(session, tenant_name=args.tenant)
        print(key)
    if args.command == "tenants":
        return tenants_command(args)
    if args.command == "usage":
        return usage_command(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
