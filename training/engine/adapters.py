"""Bottleneck adapters (Houlsby et al., 2019), small and in-project.

PEFT has no bottleneck adapters and AdapterHub's `adapters` cannot be installed beside transformers 5, so this
module adds them itself. Each transformer block's MLP output `h` becomes

    h + up(act(down(h)))          down: hidden -> bottleneck, up: bottleneck -> hidden (zero-initialised)

so a fresh adapter is exactly the identity and training starts from the base model's behaviour. The adapter is
applied by a forward hook on `layers[i].mlp`, which keeps every base parameter name (and value) unchanged: the base
state dict of an adapted model is the base model's state dict. Several named adapters can live on one base; one
(or none) is active at a time, so a serving process can switch per request with `set_active_adapter`.

On disk an adapter is `adapter.safetensors` (keys `layers.{i}.down.weight` …) plus `adapter.json`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

ADAPTER_WEIGHTS_FILE = "adapter.safetensors"
ADAPTER_CONFIG_FILE = "adapter.json"
ADAPTER_FORMAT = "bottleneck-adapter/1"

_ADAPTERS_ATTRIBUTE = (
    "bottleneck_adapters"  # nn.ModuleDict on each MLP: its parameters follow .to() and state_dict
)
_ACTIVE_ATTRIBUTE = "active_bottleneck_adapter"
_HOOK_ATTRIBUTE = "_bottleneck_adapter_hook"


class BottleneckAdapter(nn.Module):
    """down-project -> nonlinearity -> up-project, added to its input (the residual)."""

    def __init__(self, hidden_size: int, bottleneck: int):
        super().__init__()
        self.down = nn.Linear(hidden_size, bottleneck)
        self.activation = nn.GELU()
        self.up = nn.Linear(bottleneck, hidden_size)
        # Zero up-projection: the adapter starts as the identity, so adding one never changes the model's outputs.
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        # An fp32 adapter on a bf16 frozen base: computed in its own dtype, added back in the base's.
        delta = self.up(self.activation(self.down(hidden_states.to(self.down.weight.dtype))))
        return hidden_states + delta.to(hidden_states.dtype)


def transformer_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of a Llama-like model, also when wrapped (ForCausalLM, ForSequenceClassification, PEFT)."""
    for name, module in model.named_modules():
        if (
            name.endswith("layers")
            and isinstance(module, nn.ModuleList)
            and len(module)
            and hasattr(module[0], "mlp")
        ):
            return module
    raise ValueError(f"{type(model).__name__} has no `layers` ModuleList of blocks with an `mlp`")


def _apply_active_adapter(mlp: nn.Module, inputs, output):
    active = getattr(mlp, _ACTIVE_ATTRIBUTE)
    if active is None:
        return output
    return getattr(mlp, _ADAPTERS_ATTRIBUTE)[active](output)


def _adapter_containers(model: nn.Module) -> list[nn.ModuleDict]:
    return [
        getattr(layer.mlp, _ADAPTERS_ATTRIBUTE)
        for layer in transformer_layers(model)
        if hasattr(layer.mlp, _ADAPTERS_ATTRIBUTE)
    ]


def adapter_names(model: nn.Module) -> list[str]:
    containers = _adapter_containers(model)
    return list(containers[0].keys()) if containers else []


def active_adapter(model: nn.Module) -> str | None:
    layers = transformer_layers(model)
    return getattr(layers[0].mlp, _ACTIVE_ATTRIBUTE, None)


def add_adapter(model: nn.Module, name: str, bottleneck: int = 64, activate: bool = True) -> None:
    """Insert a new identity-initialised adapter called `name` after every block's MLP."""
    if name in adapter_names(model):
        raise ValueError(f"adapter {name!r} exists already")
    hidden_size = model.config.get_text_config().hidden_size
    reference_parameter = next(model.parameters())
    for layer in transformer_layers(model):
        mlp = layer.mlp
        if not hasattr(mlp, _ADAPTERS_ATTRIBUTE):
            mlp.add_module(_ADAPTERS_ATTRIBUTE, nn.ModuleDict())
            setattr(mlp, _ACTIVE_ATTRIBUTE, None)
            setattr(mlp, _HOOK_ATTRIBUTE, mlp.register_forward_hook(_apply_active_adapter))
        adapter = BottleneckAdapter(hidden_size, bottleneck)
        getattr(mlp, _ADAPTERS_ATTRIBUTE)[name] = adapter.to(
            device=reference_parameter.device, dtype=reference_parameter.dtype
        )
    if activate:
        set_active_adapter(model, name)


def set_active_adapter(model: nn.Module, name: str | None) -> None:
    """Route every block through adapter `name`, or through none (the unchanged base) with `None`."""
    if name is not None and name not in adapter_names(model):
        raise KeyError(f"no adapter {name!r}; have {adapter_names(model)}")
    for layer in transformer_layers(model):
        if hasattr(layer.mlp, _ADAPTERS_ATTRIBUTE):
            setattr(layer.mlp, _ACTIVE_ATTRIBUTE, name)


@contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[None]:
    """Run the plain base inside the block (e.g. as PPO's frozen reference), restoring the active adapter after."""
    previous = active_adapter(model)
    set_active_adapter(model, None)
    try:
        yield
    finally:
        set_active_adapter(model, previous)


def remove_adapter(model: nn.Module, name: str) -> None:
    if active_adapter(model) == name:
        set_active_adapter(model, None)
    for container in _adapter_containers(model):
        del container[name]


def adapter_parameters(model: nn.Module, name: str) -> dict[str, nn.Parameter]:
    """The parameters of adapter `name`, keyed as they are saved (`layers.{i}.down.weight` …)."""
    parameters = {}
    for index, layer in enumerate(transformer_layers(model)):
        adapter = getattr(layer.mlp, _ADAPTERS_ATTRIBUTE)[name]
        for key, parameter in adapter.named_parameters():
            parameters[f"layers.{index}.{key}"] = parameter
    return parameters


def freeze_base_train_adapter(model: nn.Module, name: str) -> None:
    """Only adapter `name` gets gradients; the base (and any other adapter) stays frozen."""
    model.requires_grad_(False)
    for parameter in adapter_parameters(model, name).values():
        parameter.requires_grad_(True)


def save_adapter(model: nn.Module, name: str, directory: Path) -> Path:
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {
        key: parameter.detach().to("cpu").contiguous()
        for key, parameter in adapter_parameters(model, name).items()
    }
    save_file(tensors, str(directory / ADAPTER_WEIGHTS_FILE))
    first = transformer_layers(model)[0].mlp
    bottleneck = getattr(first, _ADAPTERS_ATTRIBUTE)[name].down.out_features
    description = {
        "format": ADAPTER_FORMAT,
        "name": name,
        "bottleneck": bottleneck,
        "hidden_size": model.config.get_text_config().hidden_size,
        "num_layers": len(transformer_layers(model)),
        "activation": "gelu",
        "placement": "after each block's MLP",
    }
    (directory / ADAPTER_CONFIG_FILE).write_text(json.dumps(description, indent=2))
    return directory


def is_adapter_folder(directory: Path) -> bool:
    directory = Path(directory)
    if not (directory / ADAPTER_CONFIG_FILE).is_file():
        return False
    return json.loads((directory / ADAPTER_CONFIG_FILE).read_text()).get("format") == ADAPTER_FORMAT


def load_adapter(model: nn.Module, directory: Path, name: str | None = None, activate: bool = True) -> str:
    """Add the adapter saved in `directory` under `name` (default: its saved name); returns the name used."""
    from safetensors.torch import load_file

    directory = Path(directory)
    description = json.loads((directory / ADAPTER_CONFIG_FILE).read_text())
    if description.get("format") != ADAPTER_FORMAT:
        raise ValueError(f"{directory} does not hold a bottleneck adapter")
    hidden_size = model.config.get_text_config().hidden_size
    if description["hidden_size"] != hidden_size or description["num_layers"] != len(
        transformer_layers(model)
    ):
        raise ValueError(
            f"adapter was made for hidden_size={description['hidden_size']}, {description['num_layers']} layers; "
            f"the model has hidden_size={hidden_size}, {len(transformer_layers(model))} layers"
        )
    name = name or description["name"]
    add_adapter(model, name, description["bottleneck"], activate=activate)
    saved = load_file(str(directory / ADAPTER_WEIGHTS_FILE))
    parameters = adapter_parameters(model, name)
    if set(saved) != set(parameters):
        raise ValueError(
            f"{directory} does not match the adapter layout: {sorted(set(saved) ^ set(parameters))}"
        )
    with torch.no_grad():
        for key, parameter in parameters.items():
            parameter.copy_(saved[key])
    return name
