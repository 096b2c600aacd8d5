from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api.schemas import Health, SandboxLevel, error_responses
from grpo_core.sandbox import sandbox_level
from service_core.db import get_engine
from service_core.queue import broker_reachable
from service_core.settings import get_settings

# No key needed here; only the body-size cap (main.py) applies.
router = APIRouter(tags=["health"], responses=error_responses(413))


@router.get("/healthz", name="healthz", response_model=Health)
def healthz() -> Health:
    """The process is up, and which isolation tenant reward code gets here (found once, then cached)."""
    return Health(status="ok", sandbox=SandboxLevel(**sandbox_level(get_settings().sandbox_limits())))


@router.get("/readyz", name="readyz", response_model=Health, responses={503: {"model": Health}})
def readyz():
    """The database and the broker are reachable (503 otherwise)."""
    try:
        with get_engine().connect() as connection:
            connection.execute(text("SELECT 1"))
        database = True
    except Exception:
        database = False
    broker = broker_reachable()
    health = Health(status="ok" if database and broker else "unavailable", database=database, broker=broker)
    return JSONResponse(health.model_dump(), status_code=200 if health.status == "ok" else 503)
