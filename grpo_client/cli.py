"""The `grpo` command's client verbs: they talk to a running service over REST, through grpo_client.Client.

grpo datasets upload FILE | list | get ID
grpo jobs create --model M --dataset D --reward NAME[:WEIGHT[:PARAMS]]... [--set KEY=VALUE]... [--watch]
grpo jobs list [--status S] | get ID | cancel ID | watch ID | download ID [--step N] [--output PATH]
grpo rewards list
grpo models list                    the API's catalog (`grpo models list --file [PATH]`: a local models file)

Every verb takes --url (default $GRPO_API_URL, else http://127.0.0.1:8000), --key (default $GRPO_API_KEY) and
--json: one JSON document on stdout; watch prints one JSON event per line ({"id", "event", "data"}), and
create --watch the job's line before its events. Otherwise ids go to stdout (so
`DS=$(grpo datasets upload train.jsonl)` works), tables as tab-separated lines, and progress to stderr: a live
progress line (step, reward, ETA) when stderr is a terminal, a line per event when it is not.

Exit status: 0 done (for create --watch and watch: the job succeeded); 1 the job failed; 2 bad usage or an error
(the API refused the request or could not be reached, a download's sha256 did not match); 3 the job was
cancelled. An error is one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO, get_args

import httpx

from grpo_client.client import DEFAULT_URL, ApiError, ChecksumMismatch, Client, StreamLost
from grpo_client.types import Event, Job, JobStatus, Model, RewardRef

EXIT_SUCCEEDED, EXIT_FAILED, EXIT_ERROR, EXIT_CANCELLED = 0, 1, 2, 3
EXIT_BY_STATUS = {"succeeded": EXIT_SUCCEEDED, "failed": EXIT_FAILED, "cancelled": EXIT_CANCELLED}
JOB_STATUSES = get_args(JobStatus)


def _options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help="the API (default: $GRPO_API_URL, else http://127.0.0.1:8000)")
    common.add_argument("--key", help="an API key (default: $GRPO_API_KEY)")
    common.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    return common


# The options every client verb takes; api/cli.py gives them to `grpo models list` too.
OPTIONS = _options()


def _setting(text: str) -> tuple[list[str], Any]:
    """--set KEY=VALUE: the value as JSON where it parses (8, 2e-4, true, ["q_proj"]), else the string; a dotted
    key (lora.r=8) sets a nested field."""
    key, separator, raw = text.partition("=")
    if not separator or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return key.split("."), value


def _reward(text: str) -> RewardRef:
    """--reward NAME[:WEIGHT[:PARAMS]]: PARAMS a JSON object, as in length_target:0.5:{"target": 40}."""
    name, _, rest = text.partition(":")
    weight, _, params = rest.partition(":")
    if not name:
        raise argparse.ArgumentTypeError(f"expected NAME[:WEIGHT[:PARAMS]], got {text!r}")
    reward: RewardRef = {"name": name}
    if weight:
        try:
            reward["weight"] = float(weight)
        except ValueError:
            raise argparse.ArgumentTypeError(f"the weight of {name} is not a number: {weight!r}") from None
    if params:
        try:
            reward["params"] = json.loads(params)
        except ValueError:
            raise argparse.ArgumentTypeError(f"the params of {name} are not JSON: {params!r}") from None
        if not isinstance(reward["params"], dict):
            raise argparse.ArgumentTypeError(f"the params of {name} must be a JSON object, got {params!r}")
    return reward


def hyperparameters(settings: list[tuple[list[str], Any]]) -> dict[str, Any]:
    """The --set pairs as the job's hyperparameters object."""
    result: dict[str, Any] = {}
    for path, value in settings:
        target = result
        for part in path[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ValueError(f"--set {'.'.join(path)}: {part} is already set to a value, not an object")
        target[path[-1]] = value
    return result


def register(commands: argparse._SubParsersAction) -> None:
    """Add `datasets`, `jobs` and `rewards` to the `grpo` command (api/cli.py adds `models list`)."""

    def verb(group: argparse._SubParsersAction, name: str, handler, help: str) -> argparse.ArgumentParser:
        parser = group.add_parser(name, parents=[OPTIONS], help=help)
        parser.set_defaults(client_handler=handler)
        return parser

    datasets = commands.add_parser("datasets", help="prompt datasets (over the API)").add_subparsers(
        dest="datasets_command", required=True
    )
    verb(datasets, "upload", _datasets_upload, "upload a JSONL file of prompts; prints its id").add_argument(
        "file", type=Path
    )
    verb(datasets, "list", _datasets_list, "this tenant's datasets")
    verb(datasets, "get", _datasets_get, "one dataset").add_argument("id")

    jobs = commands.add_parser("jobs", help="training jobs (over the API)").add_subparsers(
        dest="jobs_command", required=True
    )
    create = verb(jobs, "create", _jobs_create, "submit a GRPO job; prints its id")
    create.add_argument("--model", required=True, help="a base model's name (grpo models list)")
    create.add_argument("--dataset", required=True, help="a dataset id (grpo datasets upload)")
    create.add_argument(
        "--reward",
        dest="rewards",
        type=_reward,
        action="append",
        required=True,
        metavar="NAME[:WEIGHT[:PARAMS]]",
        help="a reward (grpo rewards list), repeatable; PARAMS a JSON object",
    )
    create.add_argument(
        "--set",
        dest="settings",
        type=_setting,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a hyperparameter (group_size=8, lora.r=16), repeatable; values are JSON where they parse",
    )
    create.add_argument("--eval-dataset", help="a dataset id of held-out prompts")
    create.add_argument("--hardware", choices=("cpu", "gpu"))
    create.add_argument("--idempotency-key", help="a retry with the same key returns the same job")
    create.add_argument("--watch", action="store_true", help="follow the job until it ends; exit status says how")
    verb(jobs, "list", _jobs_list, "this tenant's jobs, newest first").add_argument("--status", choices=JOB_STATUSES)
    verb(jobs, "get", _jobs_get, "a job's status, progress and error").add_argument("id")
    verb(jobs, "cancel", _jobs_cancel, "stop a job").add_argument("id")
    verb(jobs, "watch", _jobs_watch, "follow a job until it ends; exit status says how").add_argument("id")
    download = verb(jobs, "download", _jobs_download, "download a job's adapter (.tar.gz), sha256 verified")
    download.add_argument("id")
    download.add_argument("--step", type=int, help="a checkpoint's step (default: the latest)")
    download.add_argument("--output", type=Path, default=Path("."), help="a file or a folder (default: .)")

    rewards = commands.add_parser("rewards", help="reward functions (over the API)").add_subparsers(
        dest="rewards_command", required=True
    )
    verb(rewards, "list", _rewards_list, "the rewards a job can name")


def run(args: argparse.Namespace) -> int:
    """Run a parsed client verb; every error becomes one line on stderr and exit status 2."""
    try:
        with Client(args.url, args.key) as client:
            return args.client_handler(client, args)
    except ApiError as error:
        message = f"{error.explanation} (HTTP {error.status})"
    except httpx.HTTPError as error:
        message = f"could not reach the API at {args.url or os.environ.get('GRPO_API_URL') or DEFAULT_URL}: {error}"
    except (ChecksumMismatch, StreamLost, ValueError, OSError) as error:
        message = str(error)
    except KeyboardInterrupt:  # a watched job goes on: `grpo jobs cancel ID` stops it
        print(f"grpo {_verb(args)}: interrupted", file=sys.stderr)
        return 130
    print(f"grpo {_verb(args)}: {message}", file=sys.stderr)
    return EXIT_ERROR


def _verb(args: argparse.Namespace) -> str:
    sub = getattr(args, f"{args.command}_command", None)
    return f"{args.command} {sub}" if sub else args.command


def _print_json(document: Any) -> None:
    print(json.dumps(document), flush=True)


def _datasets_upload(client: Client, args: argparse.Namespace) -> int:
    dataset = client.datasets.upload(args.file)
    if args.json:
        _print_json(dataset)
    else:
        print(dataset["id"])
        print(
            f"uploaded {dataset['name']}: {dataset['rows']} rows, fields {', '.join(dataset['fields'])}",
            file=sys.stderr,
        )
    return EXIT_SUCCEEDED


def _table(args: argparse.Namespace, rows: Sequence[Any], line: Callable[[Any], str]) -> int:
    """The rows as one JSON document with --json, else as a line each."""
    if args.json:
        _print_json(rows)
    else:
        for row in rows:
            print(line(row))
    return EXIT_SUCCEEDED


def _datasets_list(client: Client, args: argparse.Namespace) -> int:
    return _table(
        args,
        client.datasets.list(),
        lambda d: f"{d['id']}\t{d['name']}\t{d['rows']} rows\t{', '.join(d['fields'])}\t{d['created_at']}",
    )


def _datasets_get(client: Client, args: argparse.Namespace) -> int:
    dataset = client.datasets.get(args.id)
    if args.json:
        _print_json(dataset)
    else:
        for key, value in dataset.items():
            print(f"{key}: {', '.join(value) if isinstance(value, list) else value}")
    return EXIT_SUCCEEDED


def _jobs_create(client: Client, args: argparse.Namespace) -> int:
    job = client.jobs.create(
        model=args.model,
        dataset=args.dataset,
        rewards=args.rewards,
        hyperparameters=hyperparameters(args.settings),
        eval_dataset=args.eval_dataset,
        hardware=args.hardware,
        idempotency_key=args.idempotency_key,
    )
    if args.json:
        _print_json(job)
    else:
        print(job["id"], flush=True)
        print(f"queued {job['id']}: {job['base_model']}, {job['progress']['max_steps']} steps", file=sys.stderr)
    return _watch(client, job, args.json) if args.watch else EXIT_SUCCEEDED


def _job_line(job: Job) -> str:
    progress = job["progress"]
    return (
        f"{job['id']}\t{job['status']}\t{job['base_model']}\t{progress['step']}/{progress['max_steps']}\t"
        f"{job['created_at']}"
    )


def _jobs_list(client: Client, args: argparse.Namespace) -> int:
    return _table(args, client.jobs.list(args.status, limit=100), _job_line)


def _jobs_get(client: Client, args: argparse.Namespace) -> int:
    job = client.jobs.get(args.id)
    if args.json:
        _print_json(job)
        return EXIT_SUCCEEDED
    progress = job["progress"]
    print(f"id: {job['id']}\nstatus: {job['status']}\nmodel: {job['base_model']}\ndataset: {job['dataset_id']}")
    print(f"progress: {progress['step']}/{progress['max_steps']}")
    print(f"rewards: {', '.join(r['name'] + ':' + format(r.get('weight', 1.0), 'g') for r in job['rewards'])}")
    fields: dict[str, Any] = dict(job)
    for key in ("created_at", "started_at", "finished_at", "worker_host", "error"):
        if fields[key] is not None:
            print(f"{key}: {fields[key]}")
    return EXIT_SUCCEEDED


def _jobs_cancel(client: Client, args: argparse.Namespace) -> int:
    job = client.jobs.cancel(args.id)
    if args.json:
        _print_json(job)
    elif job["status"] == "running":
        print(f"{job['id']}: cancel requested; it stops before its next step")
    else:
        print(f"{job['id']}: {job['status']}")
    return EXIT_SUCCEEDED


def _jobs_watch(client: Client, args: argparse.Namespace) -> int:
    return _watch(client, client.jobs.get(args.id), args.json)


def _jobs_download(client: Client, args: argparse.Namespace) -> int:
    download = client.jobs.download(args.id, args.output, step=args.step)
    if args.json:
        _print_json({"path": str(download.path), "step": download.step, "sha256": download.sha256,
                     "bytes": download.bytes})  # fmt: skip
    else:
        print(download.path)
        print(f"step {download.step}, {_size(download.bytes)}, sha256 {download.sha256} verified", file=sys.stderr)
    return EXIT_SUCCEEDED


def _rewards_list(client: Client, args: argparse.Namespace) -> int:
    # An upload is named in a job by its id.
    return _table(args, client.rewards.list(), lambda r: f"{r['id'] or r['name']}\t{r['kind']}\t{r['description']}")


def models_list(client: Client, args: argparse.Namespace) -> int:
    """`grpo models list`: the models a job can name, from the API."""
    return _table(args, client.models.list(), _model_line)


def _model_line(model: Model) -> str:
    template = "chat template" if model["has_chat_template"] else "no chat template"
    return (
        f"{model['name']}\t{model['parameters']:,} parameters\t{model['context_length']} tokens\t{template}\t"
        f"{'built-in' if model['builtin'] else 'registered'}\t{model['description']}"
    )


def _watch(client: Client, job: Job, as_json: bool) -> int:
    """Follow the job to its end; the exit status says how it ended."""
    view = None if as_json else ProgressView(job, sys.stderr)
    for event in client.jobs.watch(job["id"]):
        if view is None:
            _print_json(event.to_json())
        else:
            view.show(event)
    job = client.jobs.get(job["id"])
    if view is not None:
        view.finish()
    return EXIT_BY_STATUS.get(job["status"], EXIT_ERROR)


class ProgressView:
    """A job's events for a person: on a terminal one progress line redrawn in place (bar, step/max_steps, reward,
    ETA) under a line per status change, checkpoint and warning; elsewhere (a log, a pipe) a line per event."""

    BAR_WIDTH = 24

    def __init__(self, job: Job, stream: TextIO):
        self.job_id, self.stream, self.live = job["id"], stream, stream.isatty()
        self.max_steps = job["progress"]["max_steps"]
        self.step, self.reward = job["progress"]["step"], None
        # ETA from the trainer's own step times, not from wall time: a resumed stream replays old events at once.
        self.step_seconds: deque[float] = deque(maxlen=10)
        self.bar_shown = False

    def show(self, event: Event) -> None:
        data = event.data if isinstance(event.data, dict) else {}
        if event.type == "metrics" and data.get("kind") == "train":
            values = data.get("values", {})
            self.step, self.reward = data.get("step", self.step), values.get("reward_mean")
            if values.get("step_seconds") is not None:
                self.step_seconds.append(values["step_seconds"])
            self._progress()
        elif event.type == "metrics" and data.get("kind") == "eval":
            values = ", ".join(f"{name} {_number(value)}" for name, value in data.get("values", {}).items())
            self._line(f"held-out at step {data.get('step')}: {values}")
        elif event.type == "status":
            error = f": {data['error']}" if data.get("error") else ""
            # The job's last line: the progress line is not drawn again under it.
            self._line(f"{self.job_id} {data.get('status')}{error}", redraw=data.get("status") not in EXIT_BY_STATUS)
        elif event.type == "checkpoint":
            self._line(f"checkpoint at step {data.get('step')} ({_size(data.get('bytes') or 0)})")
        elif event.type == "warning":
            self._line(f"warning: {data.get('message')}")

    def finish(self) -> None:
        if self.bar_shown:
            self.stream.write("\n")
        self.stream.flush()

    def _progress(self) -> None:
        remaining = max(self.max_steps - self.step, 0)
        eta = _duration(remaining * sum(self.step_seconds) / len(self.step_seconds)) if self.step_seconds else "?"
        text = f"step {self.step}/{self.max_steps}  reward {_number(self.reward)}  ETA {eta}"
        if not self.live:
            print(text, file=self.stream, flush=True)
            return
        filled = round(self.BAR_WIDTH * self.step / self.max_steps) if self.max_steps else 0
        bar = "#" * filled + "-" * (self.BAR_WIDTH - filled)
        self.stream.write(f"\r\x1b[K[{bar}] {text}")
        self.stream.flush()
        self.bar_shown = True

    def _line(self, text: str, redraw: bool = True) -> None:
        if self.live and self.bar_shown:
            self.stream.write("\r\x1b[K")  # the line takes the progress line's place, which is drawn under it
            self.bar_shown = redraw
        print(text, file=self.stream, flush=True)
        if self.live and self.bar_shown:
            self._progress()


def _size(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 100_000 else f"{size / 1e3:.0f} kB"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"
