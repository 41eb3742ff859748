"""How a stage adapts its base model: full fine-tuning, LoRA (PEFT) or a bottleneck adapter (`adapters.py`).

Every stage goes through the same four calls, so a stage never cares which method it trains:

    model, tokenizer = load_model_ref(base, device, task="causal_lm" | "reward",
                                      dtype=base_dtype_for(device, settings))  # bf16 frozen base on CUDA
    model = prepare_model(model, settings)           # freezes what must stay frozen; trained parameters in fp32
    ...train `trainable_parameters(model)`...
    save_stage_artifact(model, tokenizer, settings, staging, base=..., stage=..., config=..., metrics=...)

Artifact layouts (`stage.json` in every artifact says which one and which base it needs):
- full:    a complete model folder (config.json, model.safetensors, tokenizer).
- lora:    the merged complete model folder, so the policy loads like any model, plus the PEFT adapter itself in
           `lora_adapter/` (small, kept for the registry and for re-use on the same base).
- adapter: only the bottleneck adapter (`adapter.safetensors` + `adapter.json`, and `head.safetensors` for a reward
           model's new score head) plus the tokenizer; `stage.json` names the base folder it was trained on, and
           `load_model_ref` follows that name, so the registry can point at the artifact alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from training.engine import adapters, distributed
from training.engine.common import (
    STAGE_MANIFEST,
    ModelRef,
    PeftSettings,
    StageConfig,
    StageInputs,
    StageResult,
    read_stage_manifest,
    staged_output,
    unmatched_lora_targets,
    unmatched_targets_message,
    write_json,
)
from training.engine.lora_mixture import attach_mixture

Task = Literal["causal_lm", "reward"]

LORA_SUBFOLDER = "lora_adapter"
HEAD_WEIGHTS_FILE = "head.safetensors"
# The new, randomly initialised output head of a sequence-classification model: always trained, never frozen.
HEAD_MODULE_NAMES = ("score", "classifier")


def _is_peft_model(model: nn.Module) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def _head_modules(model: nn.Module) -> dict[str, nn.Module]:
    return {
        name: getattr(model, name)
        for name in HEAD_MODULE_NAMES
        if isinstance(getattr(model, name, None), nn.Module)
    }


def base_dtype_for(device, settings: PeftSettings) -> torch.dtype:
    """The dtype a stage loads its base model in: what `settings.base_dtype` asks for, else (auto) bf16 for the frozen
    base of LoRA or an adapter on CUDA (half the memory; its matmuls run in bf16 under autocast anyway) and fp32
    for full fine-tuning (the weights are the trained ones: fp32 master weights) and on CPU (slow bf16 matmuls)."""
    if settings.base_dtype != "auto":
        return getattr(torch, settings.base_dtype)
    if settings.method != "full" and torch.device(device).type == "cuda":
        return torch.bfloat16
    return torch.float32


def _trained_in_fp32(model: nn.Module) -> nn.Module:
    """Trained parameters in fp32 over a bf16 frozen base (AdamW's updates are lost in bf16's 8 bits). A trained
    head that reads the base's bf16 hidden states casts them to its own dtype (CUDA's autocast would; a CPU not)."""
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()
    for head in _head_modules(model).values():
        head.register_forward_pre_hook(_inputs_to_trained_dtype)
    return model


def _inputs_to_trained_dtype(module: nn.Module, args: tuple) -> tuple:
    dtype = next((p.dtype for p in module.parameters() if p.requires_grad), None)
    if dtype is None:
        return args
    return tuple(a.to(dtype) if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


def prepare_model(model: nn.Module, settings: PeftSettings) -> nn.Module:
    """Make exactly the parameters that `settings.method` trains require gradients; returns the model to train.

    full: every parameter. lora: PEFT LoRA on `settings.lora_target_modules` (a sequence-classification head is
    trained fully). adapter: one bottleneck adapter named `settings.adapter_name` (continued if the model already
    carries one of that name, e.g. loaded from the parent stage), plus the classification head if there is one.
    The trained parameters are fp32 also when the base was loaded in bf16 (`base_dtype_for`).
    """
    if settings.method == "full":
        model.requires_grad_(True)
        return model
    if settings.method == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        if _is_peft_model(model):
            raise ValueError("the model carries a PEFT adapter already; merge it before adding a new one")
        if adapters.adapter_names(model):
            raise ValueError("bottleneck adapters cannot be merged; train LoRA from a full or merged model")
        linear_names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
        if missing := unmatched_lora_targets(linear_names, settings.lora_target_modules):
            # Found before any training, with the names the model does have (PEFT only says "not found").
            raise ValueError(f"peft.lora_target_modules: {unmatched_targets_message(missing, linear_names)}")
        lora_config = LoraConfig(
            r=settings.lora_r,
            lora_alpha=settings.lora_alpha,
            lora_dropout=settings.lora_dropout,
            target_modules=list(settings.lora_target_modules),
            # SEQ_CLS makes PEFT train the new score head fully (modules_to_save) beside the LoRA pairs.
            task_type=TaskType.SEQ_CLS if _head_modules(model) else TaskType.CAUSAL_LM,
        )
        return _trained_in_fp32(get_peft_model(model, lora_config))
    if settings.method == "adapter":
        if settings.adapter_name not in adapters.adapter_names(model):
            adapters.add_adapter(model, settings.adapter_name, settings.adapter_bottleneck)
        adapters.set_active_adapter(model, settings.adapter_name)
        adapters.freeze_base_train_adapter(model, settings.adapter_name)
        for head in _head_modules(model).values():
            head.requires_grad_(True)
        return _trained_in_fp32(model)
    raise ValueError(f"unknown PEFT method {settings.method!r}")


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    return {name: parameter for name, parameter in model.named_parameters() if parameter.requires_grad}


def base_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every frozen parameter, by name: what LoRA and adapter training promise never to change."""
    return {name: parameter for name, parameter in model.named_parameters() if not parameter.requires_grad}


@contextmanager
def disabled_adapters(model: nn.Module) -> Iterator[None]:
    """Run the frozen base inside the block (PPO's reference with PEFT). Full fine-tuning has nothing to disable."""
    if _is_peft_model(model):
        with model.disable_adapter():
            yield
    elif adapters.active_adapter(model) is not None:
        with adapters.adapters_disabled(model):
            yield
    else:
        raise ValueError("the model has no adapter to disable; keep a separate frozen reference copy instead")


def has_disableable_adapter(model: nn.Module) -> bool:
    return _is_peft_model(model) or adapters.active_adapter(model) is not None


def save_trainable(model: nn.Module, out_dir: Path) -> Path:
    """Save only what was trained: the PEFT adapter, the active bottleneck adapter (+ head), or the whole model."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if _is_peft_model(model):
        model.save_pretrained(str(out_dir))
    elif (name := adapters.active_adapter(model)) is not None:
        adapters.save_adapter(model, name, out_dir)
        heads = _head_modules(model)
        if heads:
            from safetensors.torch import save_file

            tensors = {
                f"{head_name}.{key}": value.detach().to("cpu").contiguous()
                for head_name, head in heads.items()
                for key, value in head.state_dict().items()
            }
            save_file(tensors, str(out_dir / HEAD_WEIGHTS_FILE))
    else:
        model.save_pretrained(str(out_dir), safe_serialization=True)
    return out_dir


def load_trainable(
    model: nn.Module, directory: Path, adapter_name: str | None = None, is_trainable: bool = False
) -> nn.Module:
    """Counterpart of `save_trainable` for adapters: apply the PEFT or bottleneck adapter in `directory` to `model`.

    A full-model folder is not "applied" to anything; load it with `load_model_ref` instead.
    """
    directory = Path(directory)
    if adapters.is_adapter_folder(directory):
        adapters.load_adapter(model, directory, name=adapter_name)
        head_file = directory / HEAD_WEIGHTS_FILE
        if head_file.is_file():
            from safetensors.torch import load_file

            for key, value in load_file(str(head_file)).items():
                head_name, parameter_name = key.split(".", 1)
                with torch.no_grad():
                    getattr(model, head_name).state_dict()[parameter_name].copy_(value)
        return model
    if (directory / "adapter_config.json").is_file():
        from peft import PeftModel

        return PeftModel.from_pretrained(model, str(directory), is_trainable=is_trainable)
    raise ValueError(f"{directory} holds neither a bottleneck adapter nor a PEFT adapter")


def resolve_model_ref(ref: ModelRef) -> ModelRef:
    """Turn "an adapter artifact" into (the full base folder it needs, the adapter folder)."""
    manifest = read_stage_manifest(ref.path)
    if manifest and manifest.get("layout") == "bottleneck_adapter":
        if ref.adapter_path is not None:
            raise ValueError(
                f"{ref.path} is an adapter artifact; it cannot take a second adapter {ref.adapter_path}"
            )
        return ModelRef(path=Path(manifest["base_path"]), name=ref.name, adapter_path=Path(ref.path))
    return ref


def load_model_ref(
    ref: ModelRef, device, task: Task = "causal_lm", dtype=None, adapter_name: str | None = None
):
    """Load a registry model (full folder, merged LoRA folder or adapter artifact) as a causal LM or reward model.

    For `task="reward"` from a causal-LM folder, a new one-output score head is created (num_labels=1).
    Bottleneck adapters are attached (and active) under `adapter_name` (default: the name they were saved with);
    a PEFT LoRA `adapter_path` is merged into the weights, because the parent's LoRA is part of the starting point.
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    manifest = read_stage_manifest(ref.path)
    if manifest and manifest.get("layout") == "lora_mixture":
        # A contrastive stage's mixture of LoRA experts: the base plus experts and router that route per prompt.
        model, _ = load_model_ref(ModelRef(Path(manifest["base_path"])), device, task, dtype)
        attach_mixture(model, ref.path)
        return model.to(device), AutoTokenizer.from_pretrained(str(ref.path))
    ref = resolve_model_ref(ref)
    tokenizer = AutoTokenizer.from_pretrained(str(ref.adapter_path or ref.path))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    dtype = dtype or torch.float32
    if task == "reward":
        model = AutoModelForSequenceClassification.from_pretrained(str(ref.path), num_labels=1, dtype=dtype)
        # Sequence classification reads the score at the last non-pad token, which it finds via pad_token_id.
        model.config.pad_token_id = tokenizer.pad_token_id
    else:
        model = AutoModelForCausalLM.from_pretrained(str(ref.path), dtype=dtype)
    if ref.adapter_path is not None:
        model = load_trainable(model, ref.adapter_path, adapter_name=adapter_name)
        if _is_peft_model(model):
            model = model.merge_and_unload()
    return model.to(device), tokenizer


def save_stage_artifact(
    model: nn.Module,
    tokenizer,
    settings: PeftSettings,
    folder: Path,
    *,
    stage: str,
    base: ModelRef,
    config: dict,
    metrics: dict,
) -> Path:
    """Write the stage's artifact into `folder` (a `staged_output` staging folder) in the layout of its method."""
    folder = Path(folder)
    base = resolve_model_ref(base)
    if settings.method == "lora":
        save_trainable(model, folder / LORA_SUBFOLDER)
        model = model.merge_and_unload()  # after saving the adapter: merging folds it into the base weights
        layout = "full_model"
    elif settings.method == "adapter":
        save_trainable(model, folder)
        layout = "bottleneck_adapter"
    else:
        layout = "full_model"
    if layout == "full_model":
        model.save_pretrained(str(folder), safe_serialization=True)
        generation_config = getattr(model, "generation_config", None)
        if generation_config is not None:
            generation_config.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    manifest = {
        "stage": stage,
        "peft": settings.method,
        "layout": layout,
        "base_path": str(Path(base.path).resolve()),
        "base_name": base.name,
        "parent_adapter_path": str(base.adapter_path) if base.adapter_path else None,
        "lora_adapter": LORA_SUBFOLDER if settings.method == "lora" else None,
        "config": config,
        "metrics": metrics,
    }
    write_json(folder / STAGE_MANIFEST, manifest)
    return folder


def save_completed_stage(
    model: nn.Module,
    tokenizer,
    config: StageConfig,
    inputs: StageInputs,
    *,
    stage: str,
    metrics: dict,
    steps_completed: int,
    write_more: Callable[[Path], None] | None = None,
) -> StageResult:
    """Write a finished stage's artifact into place (a staging folder renamed to `inputs.out_dir` once complete;
    `write_more(staging)` adds the stage's own files) and return its completed result. In a distributed job only
    rank 0 writes it (the ranks' models are the same)."""
    if not distributed.is_main_process():
        return StageResult("completed", None, metrics, steps_completed)
    with staged_output(inputs.out_dir) as staging:
        save_stage_artifact(
            model,
            tokenizer,
            config.peft,
            staging,
            stage=stage,
            base=inputs.base,
            config=config.to_dict(),
            metrics=metrics,
        )
        if write_more is not None:
            write_more(staging)
    return StageResult(
        status="completed",
        artifact_path=Path(inputs.out_dir),
        metrics=metrics,
        steps_completed=steps_completed,
    )


def autocast_for(device) -> object:
    """bf16 autocast on CUDA; nothing on CPU where the stage trains in fp32."""
    if torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()
