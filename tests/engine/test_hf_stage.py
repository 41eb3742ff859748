"""Resuming TRL-based stages picks the newest complete checkpoint."""

import json

from training.engine.hf_stage import latest_checkpoint


def test_latest_checkpoint_skips_a_folder_a_killed_worker_left_half_written(tmp_path):
    assert latest_checkpoint(tmp_path / "missing") is None
    for step in (2, 4, 10):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text(json.dumps({"global_step": 2}))
    (tmp_path / "checkpoint-4" / "trainer_state.json").write_text(json.dumps({"global_step": 4}))
    (tmp_path / "checkpoint-10" / "trainer_state.json").write_text('{"global_st')  # killed while writing it
    (tmp_path / "checkpoint-6").mkdir()  # killed before anything was written
    assert latest_checkpoint(tmp_path) == str(tmp_path / "checkpoint-4")  # numeric order, not 10 < 4 as text
