import json

import pytest

from tests.service_env import clear_service_caches


@pytest.fixture
def tenant_and_dataset(tmp_path, monkeypatch):
    """A fresh SQLite database in tmp_path, migrated, with one tenant and a six-row dataset: (tenant id, dataset id)."""
    from sqlalchemy import select

    from api.services import datasets as datasets_service
    from api.services import keys as keys_service
    from service_core.db import run_migrations, session_scope
    from service_core.models import Tenant

    monkeypatch.setenv("GRPO_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("GRPO_DATABASE_URL", raising=False)
    clear_service_caches()
    run_migrations()
    rows = "".join(json.dumps({"prompt": f"What is {i} + 1?", "answer": i + 1}) + "\n" for i in range(6))
    with session_scope() as session:
        keys_service.create_api_key(session, tenant_name="t")
        tenant_id = session.scalar(select(Tenant.id))
        dataset = datasets_service.create_dataset(session, tenant_id=tenant_id, name="d.jsonl", content=rows.encode())
        dataset_id = dataset.id
    yield tenant_id, dataset_id
    clear_service_caches()
