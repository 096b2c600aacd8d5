from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session
from starlette.datastructures import UploadFile as StarletteUploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException

from api.deps import SessionDep, TenantDep
from api.schemas import DatasetPublic, DatasetsPublic, error_responses
from api.services import InvalidInput
from api.services import datasets as datasets_service
from service_core import artifacts
from service_core.settings import get_settings

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], responses=error_responses(401, 413))


def _too_large(limit_bytes: int) -> InvalidInput:
    return InvalidInput(
        f"upload larger than the {limit_bytes / 2**20:g} MiB limit (GRPO_MAX_UPLOAD_MB)", status_code=413
    )


@router.post(
    "",
    name="upload",
    status_code=201,
    response_model=DatasetPublic,
    responses=error_responses(422),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {
                            "file": {"type": "string", "format": "binary", "description": "JSONL: one row per line"}
                        },
                    },
                    "example": {"file": '{"prompt": "What is 2 + 3?", "answer": 5}\n'},
                }
            },
        }
    },
)
async def upload_dataset(request: Request, session: SessionDep, tenant_id: TenantDep) -> DatasetPublic:
    """Upload a JSONL file of prompts as the multipart field `file`. Each line is an object with a `prompt`
    string or chat `messages`, plus any fields rewards read (such as `answer`)."""
    limit = int(get_settings().max_upload_mb * 2**20)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + 64 * 1024:
        raise _too_large(limit)
    try:
        form = await request.form(max_files=1, max_fields=4, max_part_size=limit)
    except (MultiPartException, HTTPException) as error:
        # Inside an app Starlette turns MultiPartException into HTTPException(400): both mean a malformed upload.
        message = error.message if isinstance(error, MultiPartException) else str(error.detail)
        if "maximum size" in message.lower():
            raise _too_large(limit) from None
        raise InvalidInput(f"could not read the multipart upload: {message}") from None
    upload = form.get("file")
    if not isinstance(upload, StarletteUploadFile):
        raise InvalidInput("send the JSONL file as the multipart field `file` (curl -F file=@prompts.jsonl)")
    content = await upload.read(limit + 1)
    if len(content) > limit:
        raise _too_large(limit)
    name = upload.filename or "dataset.jsonl"
    return await run_in_threadpool(_create_dataset, session, tenant_id, name, content)


def _create_dataset(session: Session, tenant_id: str, name: str, content: bytes) -> DatasetPublic:
    # In a worker thread: parsing the rows, writing the file and the commit (which on SQLite may wait for the write
    # lock) would each hold up the event loop.
    dataset = datasets_service.create_dataset(session, tenant_id=tenant_id, name=name, content=content)
    session.commit()
    return DatasetPublic.model_validate(dataset)


@router.get("", name="list", response_model=DatasetsPublic)
def list_datasets(session: SessionDep, tenant_id: TenantDep) -> DatasetsPublic:
    datasets = datasets_service.list_datasets(session, tenant_id=tenant_id)
    return DatasetsPublic(data=[DatasetPublic.model_validate(d) for d in datasets], count=len(datasets))


@router.get("/{dataset_id}", name="get", response_model=DatasetPublic, responses=error_responses(404, 422))
def get_dataset(dataset_id: str, session: SessionDep, tenant_id: TenantDep) -> DatasetPublic:
    return DatasetPublic.model_validate(
        datasets_service.get_dataset(session, tenant_id=tenant_id, dataset_id=dataset_id)
    )


@router.delete(
    "/{dataset_id}",
    name="delete",
    status_code=204,
    response_class=Response,
    responses=error_responses(404, 409, 422),
)
def delete_dataset(dataset_id: str, session: SessionDep, tenant_id: TenantDep) -> Response:
    """Delete a dataset and its file. Refused (409, naming them) while a queued or running job or pre-flight uses it;
    finished jobs that used it keep their adapters, and their dataset_id then names a dataset that is gone."""
    datasets_service.delete_dataset(session, tenant_id=tenant_id, dataset_id=dataset_id)
    session.commit()
    artifacts.remove_dataset_file(dataset_id)
    return Response(status_code=204)
