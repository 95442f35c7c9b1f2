"""How much of a backbone trains: ``full``, ``frozen`` (a linear probe: only its output layer and
our heads train) or ``lora`` (PEFT LoRA adapters on its linear layers, plus its output layer).

Frozen parameters get ``requires_grad=False``, so the engine's optimizer never holds them
(``train/loop.py`` passes only trainable parameters to DeepSpeed) and ZeRO keeps no fp32 master
or Adam state for them; a frozen trunk's batch-norm statistics stay as loaded too. LoRA exists
only while a stage trains: its checkpoints hold the adapters (resume rebuilds them), and
:func:`merge_lora` folds them into the base weights of the stage's export, so everything
downstream (the diffusion stage, the release, ``eeg2im generate``) loads a plain backbone and
needs no ``peft``.
"""

from __future__ import annotations

import re
from typing import Callable

import torch
from torch import nn

from ..config import LoRAConfig

BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
HEAD = "final_layer"  # braindecode's name for a model's output layer (EEGModuleMixin models)
ADAPTER = "default"  # peft's adapter name


def _head(backbone: nn.Module, key: str) -> nn.Module:
    head = getattr(backbone, HEAD, None)
    if not isinstance(head, nn.Module) or not any(True for _ in head.parameters()):
        raise ValueError(f"{key}.finetune: {type(backbone).__name__} has no trainable '{HEAD}' output layer to train "
                         f"alone; use {key}.finetune=full")
    return head


def lora_targets(backbone: nn.Module, run: Callable[[nn.Module], object]) -> list[str]:
    """Every nn.Linear that ``backbone``'s forward (``run``) calls, but its output layer: models that
    read a layer's weight directly (LaBraM's qkv via F.linear, nn.MultiheadAttention's projections)
    would ignore an adapter on it in training, yet the merge would apply it."""
    called: list[str] = []
    hooks = [module.register_forward_hook(lambda *_, name=name: called.append(name))
             for name, module in backbone.named_modules()
             if isinstance(module, nn.Linear) and name != HEAD and not name.startswith(HEAD + ".")]
    training = backbone.training
    try:
        with torch.no_grad():
            run(backbone.eval())
    finally:
        backbone.train(training)
        for hook in hooks:
            hook.remove()
    return list(dict.fromkeys(called))


def apply_finetune(backbone: nn.Module, mode: str, lora: LoRAConfig, key: str,
                   run: Callable[[nn.Module], object]) -> nn.Module:
    """``backbone`` set up for ``mode`` (in place; LoRA layers injected by peft); ``run`` calls it on
    an example input (to find the layers it calls)."""
    if mode == "full":
        return backbone
    head = _head(backbone, key)
    if mode == "lora":
        try:
            from peft import LoraConfig, inject_adapter_in_model
        except ImportError:
            raise ImportError(f"{key}.finetune=lora needs peft: pip install 'eeg2im_scale[foundation]'") from None
        # peft matches a list by name suffix and a string as a regex over whole names: our default names exact layers
        targets = list(lora.target_modules) if lora.target_modules else "|".join(map(re.escape, lora_targets(backbone, run)))
        if not targets:
            raise ValueError(f"{key}.finetune=lora: {type(backbone).__name__} has no linear layer outside its output "
                             f"layer to adapt; set {key}.lora.target_modules or use {key}.finetune=frozen")
        config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets)
        backbone = inject_adapter_in_model(config, backbone, adapter_name=ADAPTER)
    for name, parameter in backbone.named_parameters():
        parameter.requires_grad_(mode == "lora" and ".lora_" in name)
    head.requires_grad_(True)
    in_head = set(map(id, head.modules()))
    held = [m for m in backbone.modules() if isinstance(m, BATCH_NORMS) and id(m) not in in_head]
    if held:
        backbone.register_forward_pre_hook(lambda *_: _hold_statistics(held))
    return backbone


def _hold_statistics(norms: list[nn.Module]) -> None:
    """A frozen trunk keeps its (pretrained) normalisation statistics: its batch-norm layers run as
    in eval, normalising by the running statistics and never updating them, whatever mode the
    training loop sets."""
    for norm in norms:
        norm.eval()


def merge_lora(state: dict[str, torch.Tensor], lora: LoRAConfig) -> dict[str, torch.Tensor]:
    """``state`` with every LoRA-adapted linear folded back into a plain one:
    W + (alpha / r) * B @ A under the name the un-adapted layer has (peft's ``merge_and_unload``
    on tensors, so it needs neither the module nor ZeRO's gathered parameters)."""
    scaling = lora.alpha / lora.r
    out = {}
    for name, tensor in state.items():
        if ".lora_" in name:
            continue
        if ".base_layer." in name:
            prefix, _, leaf = name.rpartition(".base_layer.")
            if leaf == "weight":
                a, b = state[f"{prefix}.lora_A.{ADAPTER}.weight"], state[f"{prefix}.lora_B.{ADAPTER}.weight"]
                tensor = tensor + scaling * (b.float() @ a.float()).to(tensor.dtype)
            name = f"{prefix}.{leaf}"
        out[name] = tensor
    return out
