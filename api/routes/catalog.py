from fastapi import APIRouter

from api.deps import TenantDep
from api.schemas import ModelPublic, ModelsPublic, error_responses
from grpo_core.spec import BASE_MODELS

router = APIRouter(prefix="/v1", tags=["catalog"], responses=error_responses(401, 413))


@router.get("/models", response_model=ModelsPublic)
def list_models(tenant_id: TenantDep) -> ModelsPublic:
    """Base models the workers can load, by the name a job spec uses."""
    return ModelsPublic(
        data=[
            ModelPublic(
                name=name,
                description=model.description,
                context_length=model.context_length,
                linear_modules=list(model.linear_modules),
            )
            for name, model in BASE_MODELS.items()
        ]
    )
