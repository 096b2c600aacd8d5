"""Device and precision: the device names an operator may write, the dtype a config resolves to, and a run on an
explicit device through sampling, log-probs, loss, checkpoint and resume. Each run test takes a device: the CPU
here, and CUDA in the `gpu` tests (make gpu-check; skipped without a GPU)."""

import json
import os

# cuBLAS reads this when its first handle is made: before any CUDA work in this process (the trainer sets it too).
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import pytest
import torch
from safetensors.torch import load_file
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from grpo_core import GRPOConfig, GRPOTrainer, RewardSpec, arithmetic_task
from grpo_core.algorithms import compute_policy_loss
from grpo_core.checkpoint import (
    MANIFEST,
    TRAINER_STATE,
    capture_rng_state,
    list_checkpoints,
    restore_rng_state,
    sha256_file,
)
from grpo_core.device import check_device_name, deterministic_kernels, resolve_device, resolve_dtype
from grpo_core.evaluation import evaluate
from grpo_core.options import TrainerOptions
from grpo_core.packed_linear import PackedLinear, pack_frozen_linears
from grpo_core.run_state import ResumeMismatch
from grpo_core.sampling import completion_logprobs
from grpo_core.step import grpo_step
from tests.grpo_core.trainer_helpers import Recorder
from tests.grpo_core.trainer_helpers import tiny_config as trainer_tiny_config

LENGTH_REWARD = [RewardSpec("length_target", params={"target": 60})]

DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=pytest.mark.gpu),
]


def tiny_config(**overrides):
    """test_trainer's tiny config with the reference pass on (beta > 0), so every pass runs on the device."""
    return trainer_tiny_config(**{"beta": 0.04, **overrides})


def make_trainer(tmp_path, config, device, callbacks=(), eval_rows=()):
    return GRPOTrainer(
        base_model="tiny-random-llama",
        train_rows=arithmetic_task()[0],
        eval_rows=eval_rows,
        rewards=LENGTH_REWARD,
        config=config,
        output_dir=tmp_path,
        callbacks=callbacks,
        options=TrainerOptions(device=device),
    )


# --- names and dtypes ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "canonical"), [("auto", "auto"), (" CPU ", "cpu"), ("cuda", "cuda"), ("cuda:3", "cuda:3")]
)
def test_device_names_in_the_documented_forms_are_accepted(name, canonical):
    assert check_device_name(name) == canonical


@pytest.mark.parametrize("name", ["gpu", "cuda:", "cuda:-1", "cuda:x", "cpu:0", "", "mps", "cuda 0"])
def test_other_device_names_are_refused_naming_the_forms(name):
    with pytest.raises(ValueError, match=r"device must be auto, cpu, cuda or cuda:N, got") as error:
        check_device_name(name)
    assert repr(name) in str(error.value)


def test_auto_is_cuda_where_torch_sees_a_gpu_and_the_cpu_elsewhere():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    if torch.cuda.is_available():
        assert resolve_device("cuda").index == torch.cuda.current_device()  # always with its index


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("name", ["cuda", "cuda:0"])
def test_a_gpu_asked_for_where_there_is_none_is_refused_before_any_model_loads(tmp_path, name):
    with pytest.raises(ValueError, match=rf"device '{name}': torch sees no CUDA device"):
        resolve_device(name)
    with pytest.raises(ValueError, match="torch sees no CUDA device"):
        make_trainer(tmp_path, tiny_config(), name)
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.gpu
def test_a_gpu_index_past_the_last_is_refused():
    with pytest.raises(ValueError, match="CUDA device"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_dtype_auto_is_float32_on_a_cpu_and_explicit_dtypes_are_taken_as_asked():
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("float32", cpu) == torch.float32
    assert resolve_dtype("bfloat16", cpu) == torch.bfloat16
    with pytest.raises(ValueError, match="dtype must be one of"):
        resolve_dtype("float16", cpu)
    with pytest.raises(ValueError, match=r"dtype must be one of \['auto', 'bfloat16', 'float32'\], got 'float16'"):
        GRPOConfig(dtype="float16")


@pytest.mark.gpu
def test_dtype_auto_is_bfloat16_on_a_gpu_that_supports_it():
    device = resolve_device("cuda")
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float32
    assert resolve_dtype("auto", device) == expected


def test_a_config_saved_before_dtype_existed_resumes_as_the_default():
    saved = GRPOConfig().to_dict()
    del saved["dtype"]
    assert GRPOConfig().training_differences(saved) == []
    assert GRPOConfig(dtype="bfloat16").training_differences(saved) == ["dtype"]


# --- the CPU-only fast paths --------------------------------------------------------------------------------------


def test_packed_linears_are_used_only_for_float32_weights_on_the_cpu():
    def model(dtype=torch.float32, device="cpu"):
        return torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 4)).to(dtype=dtype, device=device)

    cpu_fp32 = model()
    expected = 2 if torch.backends.mkldnn.is_available() else 0
    assert pack_frozen_linears(cpu_fp32) == expected
    for other in (model(dtype=torch.bfloat16), model(device="meta")):
        assert pack_frozen_linears(other) == 0
        assert not any(isinstance(m, PackedLinear) for m in other.modules())


# --- RNG ----------------------------------------------------------------------------------------------------------


def test_a_cpu_rng_state_has_no_cuda_part_and_restores_the_cpu_stream():
    cpu = torch.device("cpu")
    state = capture_rng_state(cpu)
    assert "cuda" not in state
    first = torch.rand(4)
    restore_rng_state(state, cpu)
    assert torch.equal(torch.rand(4), first)
    restore_rng_state(state)  # a caller that names no device (and an old checkpoint's state) works the same
    assert torch.equal(torch.rand(4), first)


@pytest.mark.gpu
def test_a_cuda_rng_state_is_captured_restored_and_forked_by_evaluation(tmp_path):
    device = resolve_device("cuda")
    state = capture_rng_state(device)
    assert "cuda" in state
    first = torch.rand(4, device=device)
    restore_rng_state(state, device)
    assert torch.equal(torch.rand(4, device=device), first)

    trainer = make_trainer(tmp_path, tiny_config(), "cuda")
    trainer.setup()
    before = torch.cuda.get_rng_state(device)
    evaluate(trainer.model, trainer.tokenizer, arithmetic_task()[1][:2], trainer.rewards, trainer.config)
    assert torch.equal(torch.cuda.get_rng_state(device), before), "evaluation drew from training's CUDA stream"


# --- a run on a device --------------------------------------------------------------------------------------------

# Copies between devices are deliberate (token ids to the model, completions to the tokenizer); a tensor of one
# element is a scalar (AdamW keeps its step counts on the CPU by design). Anything else computed elsewhere is not.
TRANSFERS = {"aten._to_copy", "aten.copy_", "aten.lift_fresh", "aten.lift_fresh_copy", "aten._local_scalar_dense"}


class OffDeviceTensors(TorchDispatchMode):
    """Records every op that makes a tensor of more than one element off `device` (op name, shape, device)."""

    def __init__(self, device: torch.device):
        super().__init__()
        self.device, self.found = device, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = str(func.overloadpacket)
        if name not in TRANSFERS:
            for tensor in tree_flatten(out)[0]:
                if isinstance(tensor, torch.Tensor) and tensor.numel() > 1 and tensor.device != self.device:
                    self.found.append((name, tuple(tensor.shape), str(tensor.device)))
        return out


def test_the_off_device_recorder_catches_a_tensor_made_elsewhere():
    with OffDeviceTensors(torch.device("meta")) as recorder:
        torch.zeros(3, 2)
        torch.ones(1)  # a scalar: allowed
    assert recorder.found == [("aten.zeros", (3, 2), "cpu")]


@pytest.mark.parametrize("device_name", DEVICES)
def test_every_tensor_of_a_step_lives_on_the_run_device(tmp_path, device_name):
    trainer = make_trainer(tmp_path, tiny_config(), device_name)
    trainer.setup()
    device = trainer.device
    assert device.type == device_name
    assert all(p.device == device for p in trainer.model.parameters())

    with OffDeviceTensors(device) as recorder:
        metrics, rollout = grpo_step(
            trainer.model,
            trainer.tokenizer,
            trainer.optimizer,
            trainer.scheduler,
            [trainer.train_rows[0], trainer.train_rows[1]],
            trainer.rewards,
            trainer.config,
        )
        # The loss as update_policy computes it, kept here to look at.
        logprobs = completion_logprobs(trainer.model, rollout.batch, trainer.config.temperature)
        loss = compute_policy_loss(
            logprobs,
            None,
            rollout.ref_logprobs,
            rollout.advantages,
            rollout.batch.completion_mask,
            beta=trainer.config.beta,
        ).loss
    assert recorder.found == [], f"ops that computed off {device}: {recorder.found[:20]}"
    batch, scores = rollout.batch, rollout.samples.scores
    step_tensors = {
        "prompt_ids": batch.prompt_ids,
        "prompt_mask": batch.prompt_mask,
        "completion_ids": batch.completion_ids,
        "completion_mask": batch.completion_mask,
        "truncated": batch.truncated,
        "rewards": scores.rewards,
        "per_function": scores.per_function,
        "advantages": rollout.advantages,
        "ref_logprobs": rollout.ref_logprobs,
        "logprobs": logprobs,
        "loss": loss,
    }
    assert {name: t.device for name, t in step_tensors.items() if t.device != device} == {}
    optimizer_state = [t for s in trainer.optimizer.state.values() for t in s.values() if t.numel() > 1]
    assert optimizer_state and all(t.device == device for t in optimizer_state)
    assert torch.isfinite(loss) and torch.isfinite(torch.tensor(metrics["loss"]))


def bfloat16_step(tmp_path, device_name, dtype):
    trainer = make_trainer(tmp_path, tiny_config(dtype=dtype), device_name)
    trainer.setup()
    assert trainer.dtype == torch.bfloat16
    named = dict(trainer.model.named_parameters())
    lora = {n: p.detach().clone() for n, p in named.items() if "lora_" in n}
    base = {n: p.detach().clone() for n, p in named.items() if "lora_" not in n}
    assert lora and all(named[n].dtype == torch.float32 and named[n].requires_grad for n in lora)
    assert all(p.dtype == torch.bfloat16 for p in base.values())
    # oneDNN packing is for float32 frozen weights: the bfloat16 base computes unpacked.
    assert not any(isinstance(m, PackedLinear) and not m.weight.requires_grad for m in trainer.model.modules())

    rows = trainer.train_rows[:2]
    for _ in range(2):  # the second step starts from a moved adapter, so its log-probs flow through it
        metrics, _rollout = grpo_step(
            trainer.model,
            trainer.tokenizer,
            trainer.optimizer,
            trainer.scheduler,
            rows,
            trainer.rewards,
            trainer.config,
        )
        assert torch.isfinite(torch.tensor([metrics["loss"], metrics["grad_norm"]])).all()
    state = [t for s in trainer.optimizer.state.values() for t in s.values() if t.numel() > 1]
    assert state and all(t.dtype == torch.float32 for t in state)
    named = dict(trainer.model.named_parameters())
    assert any(not torch.equal(named[n], before) for n, before in lora.items())
    assert all(torch.equal(named[n], before) for n, before in base.items())


def test_a_bfloat16_base_trains_float32_adapter_weights_on_the_cpu(tmp_path):
    bfloat16_step(tmp_path, "cpu", "bfloat16")


@pytest.mark.gpu
def test_dtype_auto_on_a_gpu_trains_a_bfloat16_base_with_a_finite_loss(tmp_path):
    if not torch.cuda.is_bf16_supported(including_emulation=False):
        pytest.skip("this GPU does not compute in bfloat16")
    bfloat16_step(tmp_path, "cuda", "auto")


@pytest.mark.parametrize("device_name", DEVICES)
def test_resume_on_a_device_gives_the_adapter_of_an_uninterrupted_run_bit_for_bit(tmp_path, device_name):
    # Evaluation between checkpointed steps: it must draw from its own streams (the GPU's too), or the resumed
    # run, which does not repeat the evaluation at its checkpoint, would sample other completions.
    config = tiny_config(max_steps=4, checkpoint_every=2, eval_every=2, dtype="float32")
    eval_rows = arithmetic_task()[1][:2]
    straight = make_trainer(tmp_path / "straight", config, device_name, eval_rows=eval_rows).train()
    stopped = make_trainer(tmp_path / "stopped", config, device_name, [Recorder(stop_after=2)], eval_rows).train()
    assert stopped.stopped_early and stopped.final_step == 2
    (checkpoint,) = list_checkpoints(tmp_path / "stopped" / "checkpoints")
    state = torch.load(checkpoint.path / TRAINER_STATE, weights_only=False)
    assert ("cuda" in state["rng"]) == (device_name == "cuda")
    assert state["run"]["dtype"] == "float32"

    recorder = Recorder()
    resumed = make_trainer(tmp_path / "stopped", config, device_name, [recorder], eval_rows).train(resume=True)
    assert [step for step, _ in recorder.steps] == [3, 4]
    a = load_file(straight.adapter_dir / "adapter_model.safetensors")
    b = load_file(resumed.adapter_dir / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_deterministic_kernels_change_nothing_on_a_cpu_and_restore_the_setting_on_a_gpu():
    before = torch.are_deterministic_algorithms_enabled()
    with deterministic_kernels(torch.device("cpu")):
        assert torch.are_deterministic_algorithms_enabled() == before
    if torch.cuda.is_available():
        with deterministic_kernels(resolve_device("cuda")):
            assert torch.are_deterministic_algorithms_enabled()
        assert torch.are_deterministic_algorithms_enabled() == before


def _rewrite_trainer_state(checkpoint, change) -> None:
    """Edit a checkpoint's trainer state as an older version would have written it, keeping the manifest true."""
    path = checkpoint.path / TRAINER_STATE
    state = torch.load(path, weights_only=False)
    change(state)
    torch.save(state, path)
    manifest = json.loads((checkpoint.path / MANIFEST).read_text())
    manifest["files"][TRAINER_STATE] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    (checkpoint.path / MANIFEST).write_text(json.dumps(manifest))


def test_resume_refuses_another_dtype_and_accepts_a_checkpoint_from_before_dtypes(tmp_path, monkeypatch):
    config = tiny_config(max_steps=3, checkpoint_every=1)
    make_trainer(tmp_path, tiny_config(max_steps=1, checkpoint_every=1), "cpu").train()
    with pytest.raises(ResumeMismatch, match="other dtype;"):
        make_trainer(tmp_path, tiny_config(max_steps=3, dtype="bfloat16"), "cpu").train(resume=True)

    def as_before_dtypes(state):
        del state["config"]["dtype"], state["run"]["dtype"]

    _rewrite_trainer_state(list_checkpoints(tmp_path / "checkpoints")[-1], as_before_dtypes)
    resumed = make_trainer(tmp_path, config, "cpu").train(resume=True)
    assert resumed.final_step == 3
    # A pre-dtype checkpoint was trained in float32, so where auto means bfloat16 (a GPU, played here) it stops.
    import grpo_core.trainer as trainer_module

    _rewrite_trainer_state(list_checkpoints(tmp_path / "checkpoints")[-1], as_before_dtypes)
    monkeypatch.setattr(trainer_module, "resolve_dtype", lambda name, device: torch.bfloat16)
    with pytest.raises(ResumeMismatch, match="other dtype;"):
        make_trainer(tmp_path, tiny_config(max_steps=4), "cpu").train(resume=True)
