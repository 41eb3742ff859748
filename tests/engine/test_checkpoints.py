"""The one checkpoint layout of every stage: safetensors + JSON, exact round trip, only complete ones resumed."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from training.engine import checkpoints


def trained_for_two_steps(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 / (step + 1))
    for _ in range(2):
        model(torch.randn(5, 4)).square().mean().backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    return model, optimizer, scheduler


def test_a_checkpoint_round_trips_weights_optimizer_scheduler_and_random_states(tmp_path):
    model, optimizer, scheduler = trained_for_two_steps()
    generator = torch.Generator().manual_seed(7)
    torch.rand(3, generator=generator)  # a generator part-way through its stream
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    weight_at_capture = model.weight.detach().clone()
    saved = checkpoints.capture(
        2,
        parameters=dict(model.named_parameters()),
        optimizer=optimizer,
        scheduler=scheduler,
        generators={"sampling": generator},
        stage_state={"history": [{"step": 1, "loss": 0.5}]},
    )
    expected_draws = (random.random(), np.random.rand(), torch.rand(1), torch.rand(1, generator=generator))
    with torch.no_grad():
        model.weight.add_(1.0)  # training goes on after the capture: the checkpoint keeps its own copy
    path = checkpoints.write(tmp_path, saved)
    assert sorted(child.name for child in path.iterdir()) == ["state.json", "tensors.safetensors"]
    assert json.loads((path / "state.json").read_text())["stage"] == {"history": [{"step": 1, "loss": 0.5}]}
    assert "optimizer.0.exp_avg" in load_file(str(path / "tensors.safetensors"))  # tensors, no pickle

    fresh_model, fresh_optimizer, fresh_scheduler = trained_for_two_steps(seed=1)
    fresh_generator = torch.Generator()
    loaded = checkpoints.read(checkpoints.latest(tmp_path))
    loaded.restore_parameters(dict(fresh_model.named_parameters()))
    loaded.restore_optimizer(fresh_optimizer)
    loaded.restore_scheduler(fresh_scheduler)
    loaded.restore_rng({"sampling": fresh_generator})
    assert loaded.step == 2 and loaded.stage_state["history"][0]["loss"] == 0.5
    assert torch.equal(fresh_model.weight, weight_at_capture)
    assert fresh_optimizer.state_dict()["param_groups"] == optimizer.state_dict()["param_groups"]
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            assert torch.equal(fresh_optimizer.state_dict()["state"][index][key], value), key
    assert fresh_scheduler.state_dict() == scheduler.state_dict()
    draws = (random.random(), np.random.rand(), torch.rand(1), torch.rand(1, generator=fresh_generator))
    assert draws[:2] == expected_draws[:2] and all(map(torch.equal, draws[2:], expected_draws[2:]))


def test_a_checkpoint_for_another_model_is_refused(tmp_path):
    model, optimizer, _ = trained_for_two_steps()
    checkpoints.write(
        tmp_path, checkpoints.capture(2, parameters=dict(model.named_parameters()), optimizer=optimizer)
    )
    with pytest.raises(
        ValueError, match=r"does not fit this model: missing \['other'\], unexpected \['bias'\]"
    ):
        checkpoints.read(checkpoints.latest(tmp_path)).restore_parameters(
            {"weight": model.weight, "other": torch.nn.Parameter(torch.zeros(1))}
        )


def test_only_the_newest_complete_checkpoint_is_kept_and_resumed(tmp_path):
    model, optimizer, _ = trained_for_two_steps()
    assert checkpoints.latest(tmp_path / "missing") is None
    for step in (2, 4, 10):
        checkpoints.write(
            tmp_path,
            checkpoints.capture(step, parameters=dict(model.named_parameters()), optimizer=optimizer),
        )
    assert [path.name for path in tmp_path.iterdir()] == ["step-00000010"]  # the older ones are removed
    # What a killed worker can leave: a folder whose state was cut short, one with no tensors, a staging folder.
    (tmp_path / "step-00000012").mkdir()
    (tmp_path / "step-00000012" / "state.json").write_text('{"format": "stage-chec')
    (tmp_path / "step-00000011").mkdir()
    (tmp_path / "step-00000011" / "state.json").write_text(
        json.dumps({"format": checkpoints.FORMAT, "step": 11})
    )
    (tmp_path / ".tmp-step-abc").mkdir()
    assert checkpoints.latest(tmp_path) == tmp_path / "step-00000010"  # numeric order, complete ones only
    checkpoints.write(
        tmp_path, checkpoints.capture(14, parameters=dict(model.named_parameters()), optimizer=optimizer)
    )
    assert [path.name for path in tmp_path.iterdir()] == ["step-00000014"]  # the leftovers are cleared too
