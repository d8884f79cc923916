"""Learning-rate schedules and the AdamW optimiser every training stage uses.

`make_optimizer(config.optimizer, total_steps)` builds, from the shared `optimizer` config section:

    clip_by_global_norm(grad_clip)  ->  AdamW(schedule, b1, b2, eps, weight_decay on matrices only)

The schedule is a linear warm-up from 0 to the peak `lr` over `warmup_steps`, then `linear` or
`cosine` decay to `end_lr_fraction * lr` at `total_steps`, or `constant`. This is the shape of the
reference's Hugging Face `get_linear_schedule_with_warmup` / `get_cosine_schedule_with_warmup`:
the first update uses lr(0) (0 with a warm-up, the peak without one).

`vision_lr_scale` multiplies the vision tower's updates (the `visual` parameters): 1 trains it like
the rest, 0 freezes it (its gradients are also left out of the clipping norm), values in between
give it a smaller step (after AdamW, whose normalised step would undo a scaled gradient). Freezing
the vision tower is common when fine-tuning a VLM on little data; the demo needs it because a
from-scratch language model's first, noisy gradients otherwise flatten the warmed-up image features.

Weight decay follows the usual transformer convention (the Hugging Face Trainer's): biases and
normalisation scales (every parameter with fewer than two dimensions) are not decayed.
"""

from __future__ import annotations

from typing import Any

import jax
import optax

SCHEDULES = ("linear", "cosine", "constant")


def make_schedule(
    *,
    lr: float,
    total_steps: int,
    warmup_steps: int = 0,
    schedule: str = "linear",
    end_lr_fraction: float = 0.0,
) -> optax.Schedule:
    """lr(step) for step = 0, 1, ...; warm-up then decay to `end_lr_fraction * lr` at `total_steps`."""
    if schedule not in SCHEDULES:
        raise ValueError(f"optimizer.schedule {schedule!r} is not one of {', '.join(SCHEDULES)}")
    if lr <= 0:
        raise ValueError(f"optimizer.lr must be > 0, got {lr}")
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1 to build a schedule, got {total_steps}")
    warmup_steps = min(int(warmup_steps), int(total_steps))
    end_lr = lr * float(end_lr_fraction)
    decay_steps = max(int(total_steps) - warmup_steps, 1)
    if schedule == "constant":
        decay = optax.constant_schedule(lr)
    elif schedule == "linear":
        decay = optax.linear_schedule(lr, end_lr, decay_steps)
    else:
        decay = optax.cosine_decay_schedule(lr, decay_steps, alpha=float(end_lr_fraction))
    if warmup_steps == 0:
        return decay
    warmup = optax.linear_schedule(0.0, lr, warmup_steps)
    return optax.join_schedules([warmup, decay], boundaries=[warmup_steps])


def decay_mask(params: Any) -> Any:
    """True for parameters that receive weight decay: matrices and embeddings, not biases or norms."""
    return jax.tree.map(lambda p: getattr(p, "ndim", 0) >= 2, params)


VISION_SUBTREE = "visual"  # the vision tower's attribute in models.qwen2_5_vl.Qwen2_5_VL


def is_vision_path(path: tuple) -> bool:
    """True for a pytree path inside the vision tower."""
    return any(getattr(entry, "key", getattr(entry, "name", None)) == VISION_SUBTREE for entry in path)


def scale_vision(factor: float) -> optax.GradientTransformation:
    """Multiplies the vision tower's leaves by `factor`, leaving every other leaf as it is."""

    def update(updates, state, params=None):
        del params
        scaled = jax.tree_util.tree_map_with_path(
            lambda path, u: u * factor if is_vision_path(path) else u, updates)
        return scaled, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(
    optimizer_config: Any, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(gradient transformation, schedule) from the `optimizer` config section (configs/base.py)."""
    c = optimizer_config
    schedule = make_schedule(
        lr=float(c.lr),
        total_steps=int(total_steps),
        warmup_steps=int(c.warmup_steps),
        schedule=str(c.schedule),
        end_lr_fraction=float(c.end_lr_fraction),
    )
    vision_scale = float(c.get("vision_lr_scale", 1.0))
    if vision_scale < 0:
        raise ValueError(f"optimizer.vision_lr_scale must be >= 0, got {vision_scale}")
    parts = []
    if vision_scale == 0.0:
        parts.append(scale_vision(0.0))  # frozen: no gradient, and none in the clipping norm
    if float(c.grad_clip) > 0:
        parts.append(optax.clip_by_global_norm(float(c.grad_clip)))
    parts.append(
        optax.adamw(
            learning_rate=schedule,
            b1=float(c.b1),
            b2=float(c.b2),
            eps=float(c.eps),
            weight_decay=float(c.weight_decay),
            mask=decay_mask,
        )
    )
    if vision_scale != 1.0:
        parts.append(scale_vision(vision_scale))  # after AdamW (and its weight decay): the step itself
    return optax.chain(*parts), schedule
