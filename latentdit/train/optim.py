"""The optimiser side of training: AdamW over the parameter groups, the LR schedule and the EMA."""

from __future__ import annotations

import math

import torch

from latentdit.config import Config


def lr_lambda(cfg: Config):
    """Linear warmup to the base LR, then cosine decay to ``min_lr_ratio`` over ``train.steps``."""
    o, steps = cfg.optim, cfg.train.steps

    def f(step: int) -> float:
        if o.warmup_steps > 0 and step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        if o.schedule == "constant":
            return 1.0
        p = min(1.0, (step - o.warmup_steps) / max(1, steps - o.warmup_steps))
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p))

    return f


def param_groups(model: torch.nn.Module, cfg: Config) -> list[dict]:
    """The network's parameters at optim.lr and a learned encoder's at optim.lr * encoder.lr_scale."""
    enc = [p for n, p in model.named_parameters() if n.startswith("encoder.") and p.requires_grad]
    rest = [p for n, p in model.named_parameters() if not n.startswith("encoder.") and p.requires_grad]
    groups = [{"params": rest}]
    if enc:
        groups.append({"params": enc, "lr": cfg.optim.lr * cfg.encoder.lr_scale})
    return groups


def make_optimizer(model: torch.nn.Module, cfg: Config) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`, with the fused kernel (one pass over all parameters).

    The default single-tensor AdamW on the CPU runs a dozen elementwise ops per parameter tensor;
    the fused kernel does the same update in one pass (``docs/bench/train_step.py`` times the
    trainer's step with and without it, and with and without the multi-tensor EMA).
    """
    kw = dict(lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, betas=(cfg.optim.beta1, cfg.optim.beta2))
    try:
        return torch.optim.AdamW(param_groups(model, cfg), fused=True, **kw)
    except (RuntimeError, TypeError):  # a device or dtype without the fused kernel
        return torch.optim.AdamW(param_groups(model, cfg), **kw)


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema <- decay ema + (1 - decay) model, over all parameters in one multi-tensor op."""
    pe = list(ema.parameters())
    torch._foreach_lerp_(pe, [p.detach() for p in model.parameters()], 1 - decay)
    for be, bm in zip(ema.buffers(), model.buffers()):
        be.copy_(bm)


def ema_decay_at(cfg: Config, step: int) -> float:
    d = cfg.train.ema_decay
    return min(d, (1 + step) / (10 + step)) if cfg.train.ema_warmup else d
