"""Per-prompt difficulty: what each dataset row a job trained on scored over the run (worker/writes.py folds each
step's groups in), ordered hardest, easiest or most improved, with the row's prompt read from the dataset file."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Row
from sqlalchemy.orm import Session

from api.schemas import JobPromptPublic, JobPromptsPublic, PromptOrder
from grpo_core.data import DatasetError, read_rows, reward_prompt
from service_core import artifacts
from service_core.models import PromptStats

# Cut as a stored sample's prompt is (grpo_core.report.SAMPLE_TEXT_CHARS; a test holds the two equal).
PROMPT_TEXT_CHARS = 16 * 1024

_MEAN = PromptStats.reward_sum / func.nullif(PromptStats.reward_count, 0)
_IMPROVEMENT = PromptStats.last_reward - PromptStats.first_reward
# Each order puts prompts without a figure (no finite reward) last, and breaks ties by row, so pages are stable.
_ORDERS = {
    "hardest": (_MEAN.is_(None), _MEAN.asc()),
    "easiest": (_MEAN.is_(None), _MEAN.desc()),
    "most_improved": (_IMPROVEMENT.is_(None), _IMPROVEMENT.desc()),
}


def list_prompt_stats(
    session: Session, *, job_id: str, order: PromptOrder, limit: int, offset: int
) -> tuple[list[Row], int]:
    """A page of the job's per-prompt figures in `order`, and how many prompts it has in all. The caller checked
    the job is the tenant's."""
    query = (
        select(PromptStats, _MEAN.label("mean_reward"))
        .where(PromptStats.job_id == job_id)
        .order_by(*_ORDERS[order], PromptStats.row)
        .limit(limit)
        .offset(offset)
    )
    count = session.scalar(select(func.count()).where(PromptStats.job_id == job_id)) or 0
    return list(session.execute(query)), count


def prompts_public(page: list[Row], count: int, *, dataset_id: str) -> JobPromptsPublic:
    """The page with each row's prompt, read from the dataset file (only the page's rows are parsed)."""
    try:
        rows = read_rows(artifacts.dataset_path(dataset_id), [stats.row for stats, _mean in page])
    except (OSError, DatasetError):  # the file is gone from the store, or damaged: the figures still stand
        rows = {}
    return JobPromptsPublic(
        data=[
            JobPromptPublic(
                row=stats.row,
                prompt=_shown_prompt(rows[stats.row]) if stats.row in rows else None,
                times_sampled=stats.groups,
                mean_reward=mean,
                zero_variance_share=stats.zero_variance_groups / stats.groups,
                first_step=stats.first_step,
                first_reward=stats.first_reward,
                latest_step=stats.last_step,
                latest_reward=stats.last_reward,
                improvement=_difference(stats.last_reward, stats.first_reward),
            )
            for stats, mean in page
        ],
        count=count,
    )


def _difference(latest: float | None, first: float | None) -> float | None:
    return None if latest is None or first is None else latest - first


def _cut(text: str) -> str:
    if len(text) <= PROMPT_TEXT_CHARS:
        return text
    return text[:PROMPT_TEXT_CHARS] + f"\n[truncated: {len(text) - PROMPT_TEXT_CHARS} more characters]"


def _shown_prompt(row: dict[str, Any]) -> str | list[dict[str, Any]]:
    """The prompt as a stored sample shows it: the string, or the chat messages, long text cut with a marker."""
    prompt = reward_prompt(row)
    if isinstance(prompt, str):
        return _cut(prompt)
    return [{**message, "content": _cut(message["content"])} for message in prompt]
