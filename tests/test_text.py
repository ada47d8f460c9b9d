"""Class text embeddings from prompt ensembles, with the tiny-random model and the real tokenizer."""

from __future__ import annotations

from typing import Any

import numpy as np
import open_clip
import pytest
import torch

from affectstream.engine.models import ModelSpec, build_clip
from affectstream.engine.text import encode_prompt_ensembles, logit_scale
from affectstream.errors import ConfigError

ENSEMBLES = {
    "happiness": ["a photo of a happy person", "a smiling face with raised cheeks"],
    "sadness": ["a photo of a sad person"],
    "surprise": ["a photo of a surprised person", "raised brows and a dropped jaw", "wide open eyes"],
}


@pytest.fixture(scope="module")
def model_and_tokenizer() -> tuple[Any, Any]:
    spec = ModelSpec.from_preset("tiny-random")
    return build_clip(spec), open_clip.get_tokenizer(spec.arch)


def test_one_unit_row_per_class_in_order(model_and_tokenizer: tuple[Any, Any]) -> None:
    model, tokenizer = model_and_tokenizer
    embeddings = encode_prompt_ensembles(model, tokenizer, ENSEMBLES)
    assert embeddings.shape == (3, 32) and embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    # Row order follows the dict: encoding one class alone gives that row.
    alone = encode_prompt_ensembles(model, tokenizer, {"sadness": ENSEMBLES["sadness"]})
    np.testing.assert_allclose(alone[0], embeddings[1], atol=1e-5)


def test_a_class_is_the_mean_of_its_normalised_prompts(model_and_tokenizer: tuple[Any, Any]) -> None:
    model, tokenizer = model_and_tokenizer
    prompts = ENSEMBLES["surprise"]
    with torch.inference_mode():
        each = torch.nn.functional.normalize(model.encode_text(tokenizer(prompts)), dim=-1)
    expected = torch.nn.functional.normalize(each.mean(dim=0), dim=0).numpy()
    got = encode_prompt_ensembles(model, tokenizer, {"surprise": prompts})[0]
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_a_class_without_prompts_is_refused(model_and_tokenizer: tuple[Any, Any]) -> None:
    model, tokenizer = model_and_tokenizer
    with pytest.raises(ConfigError, match="fear"):
        encode_prompt_ensembles(model, tokenizer, {"anger": ["an angry face"], "fear": []})


def test_logit_scale_is_clips_initial_temperature(model_and_tokenizer: tuple[Any, Any]) -> None:
    model, _ = model_and_tokenizer
    # An untrained CLIP starts at 1/0.07; OpenAI's trained one ends at 100.
    assert logit_scale(model) == pytest.approx(1 / 0.07, rel=1e-4)
