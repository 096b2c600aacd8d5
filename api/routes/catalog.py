from fastapi import APIRouter

from api.deps import TenantDep
from api.schemas import ModelPublic, ModelsPublic, RewardPublic, RewardsPublic, error_responses
from grpo_core.rewards import reward_registry
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


@router.get("/rewards", response_model=RewardsPublic)
def list_rewards(tenant_id: TenantDep) -> RewardsPublic:
    """Reward functions a job can name: built-ins and those the operator installed as entry points."""
    data = []
    for fn in reward_registry().values():
        try:
            fields = list(fn.fields(fn.params_model()))
        except Exception:  # params without defaults: the fields depend on what the job passes
            fields = []
        data.append(
            RewardPublic(name=fn.name, description=fn.description, params_schema=fn.params_schema(), fields=fields)
        )
    return RewardsPublic(data=data)
