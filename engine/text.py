"""Class text embeddings from prompt ensembles, for zero-shot scoring with a CLIP model.

Each class is described by several prompts ("a photo of an angry person", "a face with lowered
brows and pressed lips", …). As in CLIP's zero-shot recipe, each prompt's embedding is normalised,
the class embedding is their mean, normalised again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from affectstream.errors import ConfigError


def encode_prompt_ensembles(
    model: Any, tokenizer: Callable[[list[str]], torch.Tensor], ensembles: dict[str, list[str]]
) -> np.ndarray:
    """``(n_classes, D)`` float32 unit rows, in the order of ``ensembles``' keys."""
    empty = [label for label, prompts in ensembles.items() if not prompts]
    if not ensembles or empty:
        raise ConfigError(f"every class needs at least one prompt; none for {empty or 'any class'}")
    prompts = [prompt for class_prompts in ensembles.values() for prompt in class_prompts]
    device = next(model.parameters()).device
    with torch.inference_mode():
        tokens = tokenizer(prompts).to(device)
        embeddings = torch.nn.functional.normalize(model.encode_text(tokens).float(), dim=-1)
        rows = []
        start = 0
        for class_prompts in ensembles.values():
            rows.append(embeddings[start : start + len(class_prompts)].mean(dim=0))
            start += len(class_prompts)
        classes = torch.nn.functional.normalize(torch.stack(rows), dim=-1)
    return classes.cpu().numpy().astype(np.float32)


def logit_scale(model: Any) -> float:
    """CLIP's learned temperature, as the multiplier of cosine similarities (100 for OpenAI's)."""
    return float(model.logit_scale.detach().exp().item())
