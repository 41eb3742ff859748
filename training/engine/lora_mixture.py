"""A mixture of LoRA experts with a learned router: per-domain experts on every target Linear, mixed per sample.

Every target Linear adds Σ_e w_e · (α/r) B_e A_e x to its frozen output; the weights w come from a router (a linear
layer over the RMS-normalised mean of the prompt's token embeddings, softmax over experts), shared by all expert
layers of one model through one `Routing`. The contrastive stage trains it (`contrastive.py`); loading a saved
mixture (`attach_mixture`, used by `finetuning_methods.load_model_ref`) makes the model route each prompt itself
in `generate`. On disk: `mixture.safetensors` (experts and router) and `mixture.json` (domains, rank, targets).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from training.engine.common import (
    lora_target_matches,
    unmatched_lora_targets,
    unmatched_targets_message,
    write_json,
)
from training.engine.data import prompt_text

MIXTURE_WEIGHTS_FILE = "mixture.safetensors"
MIXTURE_CONFIG_FILE = "mixture.json"


class Routing:
    """Per-sample mixing weights shared by every expert layer of one model; `None` switches the experts off."""

    def __init__(self):
        self.weights: torch.Tensor | None = None  # (batch, experts)


class LoraExpertsLinear(nn.Module):
    """A frozen Linear plus E low-rank experts: y = W x + (α/r) Σ_e w_e · B_e A_e x, w from the shared Routing."""

    def __init__(self, base: nn.Linear, num_experts: int, rank: int, alpha: float, routing: Routing):
        super().__init__()
        self.base = base
        self.routing = routing
        self.scaling = alpha / rank
        self.lora_A = nn.Parameter(
            torch.empty(num_experts, rank, base.in_features, device=base.weight.device)
        )
        self.lora_B = nn.Parameter(
            torch.zeros(num_experts, base.out_features, rank, device=base.weight.device)
        )
        for expert in range(
            num_experts
        ):  # same init as PEFT's LoRA: A random, B zero, so training starts at the base
            nn.init.kaiming_uniform_(self.lora_A.data[expert], a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output = self.base(x)
        weights = self.routing.weights
        if weights is None:
            return output
        # Σ_e w_e B_e A_e x as two plain matmuls over all experts at once: A stacked to [E·r, in], the rank
        # activations scaled by each sample's w_e, B side by side as [out, E·r]. Same sum as one einsum per
        # expert, without a [batch, tokens, experts, out] intermediate.
        experts, rank = self.lora_A.shape[:2]
        down = nn.functional.linear(x, self.lora_A.flatten(0, 1).to(x.dtype))
        down = down.unflatten(-1, (experts, rank)) * weights.to(x.dtype)[:, None, :, None]
        stacked_up = self.lora_B.permute(1, 0, 2).flatten(1).to(x.dtype)
        return output + self.scaling * nn.functional.linear(down.flatten(-2), stacked_up)


class MixtureOfLoraExperts:
    """Installs expert layers and a router on a causal LM; the model keeps its usual forward and generate."""

    def __init__(
        self, model: nn.Module, domains: list[str], rank: int, alpha: float, target_modules: tuple[str, ...]
    ):
        self.model = model
        self.domains = list(domains)
        self.rank = rank
        self.alpha = alpha
        self.target_modules = tuple(target_modules)
        self.routing = Routing()
        self.auto_route = (
            False  # inference: route from the prompt on every multi-token forward (see route_hook)
        )
        model.requires_grad_(False)
        linear_names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
        if missing := unmatched_lora_targets(linear_names, self.target_modules):
            raise ValueError(f"peft.lora_target_modules: {unmatched_targets_message(missing, linear_names)}")
        self.expert_layers: dict[str, LoraExpertsLinear] = {}
        for name, module in list(model.named_modules()):
            for child_name, child in list(module.named_children()):
                full_name = f"{name}.{child_name}" if name else child_name
                if isinstance(child, nn.Linear) and any(
                    lora_target_matches(full_name, target) for target in self.target_modules
                ):
                    wrapped = LoraExpertsLinear(child, len(self.domains), rank, alpha, self.routing)
                    setattr(module, child_name, wrapped)
                    self.expert_layers[full_name] = wrapped
        hidden_size = model.config.get_text_config().hidden_size
        embedding = model.get_input_embeddings().weight
        self.router = nn.Linear(hidden_size, len(self.domains)).to(device=embedding.device)
        model.add_module("expert_router", self.router)  # moves with .to() and shows up in parameters()
        model.register_forward_pre_hook(self._route_hook, with_kwargs=True)

    def parameters(self) -> dict[str, nn.Parameter]:
        parameters = {f"{name}.lora_A": layer.lora_A for name, layer in self.expert_layers.items()}
        parameters.update({f"{name}.lora_B": layer.lora_B for name, layer in self.expert_layers.items()})
        parameters.update({f"expert_router.{key}": value for key, value in self.router.named_parameters()})
        return parameters

    def router_logits(self, input_ids: torch.Tensor, prompt_mask: torch.Tensor) -> torch.Tensor:
        """Router scores from the mean of the prompt's token embeddings (the response must not steer its own route)."""
        embeddings = self.model.get_input_embeddings()(input_ids)
        mask = prompt_mask.unsqueeze(-1).to(embeddings.dtype)
        pooled = (embeddings * mask).sum(1) / mask.sum(1).clamp(min=1)
        # RMS-normalised, so the router's input has unit scale whatever the embedding scale of the base model.
        pooled = pooled.float() * torch.rsqrt(pooled.float().pow(2).mean(-1, keepdim=True) + 1e-6)
        return self.router(pooled.to(self.router.weight.dtype))

    def set_route(self, input_ids: torch.Tensor, prompt_mask: torch.Tensor) -> torch.Tensor:
        logits = self.router_logits(input_ids, prompt_mask)
        self.routing.weights = logits.softmax(-1)
        return logits

    def _route_hook(self, module, args, kwargs):
        # In generation the first forward sees the whole (left-padded) prompt; single-token decoding steps that
        # follow reuse its weights. Training sets the route explicitly and leaves auto_route off.
        if not self.auto_route:
            return None
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is None:
            return None
        weights = self.routing.weights
        if input_ids.shape[1] > 1 or weights is None or weights.shape[0] != input_ids.shape[0]:
            attention_mask = kwargs.get("attention_mask")
            prompt_mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
            with torch.no_grad():
                self.set_route(input_ids, prompt_mask)
        return None

    def save(self, folder: Path, parameters: dict[str, torch.Tensor] | None = None) -> None:
        """Write the mixture; `parameters` stands in for its own where those are shards (FSDP: gathered whole)."""
        parameters = self.parameters() if parameters is None else parameters
        tensors = {
            key: value.detach().to("cpu", torch.float32).contiguous() for key, value in parameters.items()
        }
        save_file(tensors, str(Path(folder) / MIXTURE_WEIGHTS_FILE))
        write_json(
            Path(folder) / MIXTURE_CONFIG_FILE,
            {
                "format": "lora-mixture/1",
                "domains": self.domains,
                "rank": self.rank,
                "alpha": self.alpha,
                "target_modules": list(self.target_modules),
                "router_input": "RMS-normalised mean of prompt token embeddings",
            },
        )


def attach_mixture(model: nn.Module, folder: Path) -> MixtureOfLoraExperts:
    """Load a saved mixture onto its base model, routing automatically from each prompt (for generation)."""
    description = json.loads((Path(folder) / MIXTURE_CONFIG_FILE).read_text())
    mixture = MixtureOfLoraExperts(
        model,
        description["domains"],
        description["rank"],
        description["alpha"],
        tuple(description["target_modules"]),
    )
    saved = load_file(str(Path(folder) / MIXTURE_WEIGHTS_FILE))
    with torch.no_grad():
        for key, parameter in mixture.parameters().items():
            parameter.copy_(saved[key])
    mixture.auto_route = True
    model.expert_mixture = mixture  # reachable from the model, e.g. to read the route it chose
    return mixture


def route_of(model, tokenizer, prompts: list[list[dict]]) -> torch.Tensor:
    """Mixing weights (prompts × experts) a loaded mixture policy gives each prompt."""
    mixture: MixtureOfLoraExperts = model.expert_mixture
    texts = [prompt_text(tokenizer, prompt) for prompt in prompts]
    batch = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt").to(model.device)
    with torch.no_grad():
        return mixture.router_logits(batch["input_ids"], batch["attention_mask"]).softmax(-1)
