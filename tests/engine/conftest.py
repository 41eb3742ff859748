"""Fixtures of the engine tests."""

from __future__ import annotations

import pytest
from torch import nn
from torch.nn.modules.module import register_module_forward_hook

# The tiny model's decoder: every forward pass of a whole model (a policy, a reference, a reward model), however
# PEFT or our adapters wrap it, runs it once, also where a stage calls the decoder without the output layer
# (fast_paths.response_log_probs).
WHOLE_MODEL_CLASSES = ("LlamaModel",)


class ForwardCalls:
    def __init__(self):
        self.count = 0

    def hook(self, module: nn.Module, inputs, output) -> None:
        if type(module).__name__ in WHOLE_MODEL_CLASSES:
            self.count += 1


@pytest.fixture
def forward_calls():
    """Counts the forward passes of whole models while the test runs: cancel tests count work, not wall time."""
    calls = ForwardCalls()
    handle = register_module_forward_hook(calls.hook)
    yield calls
    handle.remove()
