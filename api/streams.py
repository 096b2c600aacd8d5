"""Open event streams, counted in this API process: a cap per tenant and one for the process, so that no tenant
can hold every stream (or every read) the API has. The counts live in the process: with several API processes
behind a load balancer, each allows GRPO_MAX_STREAMS_PER_TENANT and GRPO_MAX_STREAMS of its own."""

from __future__ import annotations

from collections import Counter

from fastapi import HTTPException

# A slot frees when its job ends or its client leaves, which nothing predicts: a short, fixed wait. (A browser's
# EventSource does not retry after a 429 at all; it reports an error and the page decides.)
RETRY_AFTER_SECONDS = 5


class StreamSlots:
    """Counts of open streams by tenant. Used only from the event loop's thread, so it needs no lock."""

    def __init__(self) -> None:
        self.by_tenant: Counter[str] = Counter()

    @property
    def total(self) -> int:
        return sum(self.by_tenant.values())

    def acquire(self, tenant_id: str, *, per_tenant: int, total: int) -> None:
        """Take a slot for `tenant_id`, or raise a 429 (with Retry-After) that names the cap that is full."""
        if self.by_tenant[tenant_id] >= per_tenant:
            open_now = self.by_tenant[tenant_id]
            self._refuse(f"this tenant has {open_now} event streams open", per_tenant, "GRPO_MAX_STREAMS_PER_TENANT")
        if self.total >= total:
            self._refuse(f"this API process has {self.total} event streams open", total, "GRPO_MAX_STREAMS")
        self.by_tenant[tenant_id] += 1

    def release(self, tenant_id: str) -> None:
        self.by_tenant[tenant_id] -= 1
        if self.by_tenant[tenant_id] <= 0:
            del self.by_tenant[tenant_id]

    @staticmethod
    def _refuse(what: str, limit: int, setting: str) -> None:
        raise HTTPException(
            status_code=429,
            detail=f"too many event streams: {what}, the limit is {limit} ({setting}); close one, or retry after "
            f"{RETRY_AFTER_SECONDS} s",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
