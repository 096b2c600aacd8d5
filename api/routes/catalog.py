from fastapi import APIRouter

from api.deps import TenantDep
from api.schemas import ModelPublic, ModelsPublic, error_responses
from api.services.catalog import model_catalog
from grpo_core.catalog import default_target_modules

router = APIRouter(prefix="/v1", tags=["models"], responses=error_responses(401, 413))


@router.get("/models", name="list", response_model=ModelsPublic)
def list_models(tenant_id: TenantDep) -> ModelsPublic:
    """Base models the workers can load, by the name a job spec uses: the built-in ones and the operator's own."""
    return ModelsPublic(
        data=[
            ModelPublic(
                name=name,
                description=model.description,
                context_length=model.context_length,
                linear_modules=list(model.linear_modules),
                parameters=model.parameters,
                has_chat_template=model.has_chat_template,
                default_target_modules=list(default_target_modules(model)),
                builtin=model.source is None,
            )
            for name, model in model_catalog().items()
        ]
    )
