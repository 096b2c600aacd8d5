import json

import pytest
import torch

from grpo_core.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    read_checkpoint,
    remove_partial_checkpoints,
    save_checkpoint,
)

pytestmark = pytest.mark.unit


class FakeAdapterModel:
    """Stands in for a PeftModel: save_pretrained writes two files, like PEFT's adapter folder."""

    def save_pretrained(self, folder, safe_serialization=True):
        (folder / "adapter_config.json").write_text("{}")
        (folder / "adapter_model.safetensors").write_bytes(b"weights")


def test_checkpoints_are_listed_in_order_with_a_manifest(tmp_path):
    for step in (3, 1, 2):
        save_checkpoint(tmp_path, step, FakeAdapterModel(), {"step": step})
    assert [c.step for c in list_checkpoints(tmp_path)] == [1, 2, 3]
    manifest = json.loads((tmp_path / "step-000003" / "manifest.json").read_text())
    assert set(manifest["files"]) == {"adapter_config.json", "adapter_model.safetensors", "trainer_state.pt"}
    assert torch.load(tmp_path / "step-000003" / "trainer_state.pt")["step"] == 3


def test_a_half_written_checkpoint_is_never_the_latest(tmp_path):
    save_checkpoint(tmp_path, 1, FakeAdapterModel(), {"step": 1})
    # A crash mid-write leaves a temp folder, or a step folder whose manifest is missing or whose file was cut.
    (tmp_path / ".tmp-step-000002-abc").mkdir()
    (tmp_path / "step-000003").mkdir()
    (tmp_path / "step-000003" / "adapter_config.json").write_text("{}")
    cut = save_checkpoint(tmp_path, 4, FakeAdapterModel(), {"step": 4})
    (cut.path / "adapter_model.safetensors").write_bytes(b"wei")
    assert latest_checkpoint(tmp_path).step == 1
    assert remove_partial_checkpoints(tmp_path) == 1 and not (tmp_path / ".tmp-step-000002-abc").exists()


def test_verify_detects_a_changed_file(tmp_path):
    checkpoint = save_checkpoint(tmp_path, 1, FakeAdapterModel(), {"step": 1})
    (checkpoint.path / "adapter_model.safetensors").write_bytes(b"WEIGHTS")  # same size, other bytes
    assert read_checkpoint(checkpoint.path) is not None
    assert read_checkpoint(checkpoint.path, verify=True) is None


def test_an_atomic_write_leaves_all_or_nothing(tmp_path):
    import pytest

    from grpo_core.files import atomic_write

    target = tmp_path / "folder"
    with pytest.raises(RuntimeError), atomic_write(target) as tmp:
        tmp.mkdir()
        (tmp / "half").write_text("x")
        raise RuntimeError("crash mid-write")
    assert list(tmp_path.iterdir()) == []
    with atomic_write(target) as tmp:
        tmp.mkdir()
        (tmp / "first").write_text("1")
    with atomic_write(target, replace=False) as tmp:  # someone else's copy is already there: keep it
        tmp.mkdir()
        (tmp / "second").write_text("2")
    assert [p.name for p in tmp_path.iterdir()] == ["folder"] and [p.name for p in target.iterdir()] == ["first"]
    with atomic_write(target) as tmp:
        tmp.write_bytes(b"a file now")
    assert target.read_bytes() == b"a file now"
