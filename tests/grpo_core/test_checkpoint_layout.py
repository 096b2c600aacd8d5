"""The checkpoint folder's layout (grpo_core/checkpoint_layout.py) against a real save: the files a PEFT adapter
save writes are exactly the ones the layout names, a fork reads the ones it says, and the adapter archive built
from those names is one PEFT loads."""

import shutil
import tarfile

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from grpo_core import checkpoint_layout as layout
from grpo_core.checkpoint import ForkPoint, ForkPointUnusable, load_fork_point, read_checkpoint, save_checkpoint


def tiny_base() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    return LlamaForCausalLM(config)


def tiny_adapter():
    """A LoRA model and its AdamW after one update (so the optimizer state has moments to carry)."""
    model = get_peft_model(tiny_base(), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(input_ids=torch.tensor([[1, 2, 3]]), labels=torch.tensor([[1, 2, 3]])).loss.backward()
    optimizer.step()
    return model, optimizer


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model, optimizer = tiny_adapter()
    root = tmp_path_factory.mktemp("checkpoints")
    return save_checkpoint(root, 7, model, {"step": 7, "optimizer": optimizer.state_dict()})


def test_a_save_writes_exactly_the_files_the_layout_names(saved):
    assert saved.path.name == layout.step_dir_name(7) and layout.step_of_dir(saved.path.name) == 7
    written = sorted(path.relative_to(saved.path).as_posix() for path in saved.path.rglob("*"))
    assert written == sorted(layout.CHECKPOINT_FILES)
    assert read_checkpoint(saved.path, verify=True) == saved


def test_step_folder_names_sort_as_steps_and_others_are_not_checkpoints():
    assert layout.step_of_dir(layout.step_dir_name(123456789)) == 123456789
    assert sorted(map(layout.step_dir_name, (10, 9, 100))) == list(map(layout.step_dir_name, (9, 10, 100)))
    for name in ("step-7", ".tmp-step-000007-abc", "step-000007.old", "adapter.tar.gz"):
        assert layout.step_of_dir(name) is None


@pytest.mark.parametrize("missing", layout.FORK_FILES)
def test_a_fork_reads_each_of_the_fork_files(saved, tmp_path, missing):
    """FORK_FILES is what the API checks at submit (api/services/jobs.py): each is one a fork cannot do without."""
    copy = tmp_path / saved.path.name
    shutil.copytree(saved.path, copy)
    model, optimizer = tiny_adapter()
    load_fork_point(model, optimizer, ForkPoint(copy, optimizer=True))
    (copy / missing).unlink()
    with pytest.raises(ForkPointUnusable):
        load_fork_point(model, optimizer, ForkPoint(copy, optimizer=True))


def test_the_adapter_archive_holds_the_adapter_files_and_peft_loads_it(saved, tmp_path):
    from service_core import artifacts

    folder = artifacts.adapter_folder_name("job_" + "0" * 32, 7)
    path, _sha256, _size = artifacts.pack_adapter(saved.path, folder)
    assert path.name == artifacts.ARCHIVE_NAME
    with tarfile.open(path) as archive:
        assert sorted(archive.getnames()) == sorted(f"{folder}/{name}" for name in layout.ADAPTER_FILES)
        archive.extractall(tmp_path / "unpacked", filter="data")
    loaded = PeftModel.from_pretrained(tiny_base(), tmp_path / "unpacked" / folder)
    assert loaded.peft_config["default"].r == 2
    # The archive is written into the checkpoint's folder and is not one of its files: the folder stays complete.
    assert read_checkpoint(saved.path, verify=True) == saved
    path.unlink()
