"""Prompt ensembles: the seed's tables verbatim, sentences per emotion, sentiment poles."""

from __future__ import annotations

import pytest

from affectstream.engine.labels import EMOTIONS
from affectstream.engine.prompts import (
    PROMPT_SETS,
    SENTIMENTS,
    emotion_prompts,
    sentiment_prompts,
    tidy,
)
from affectstream.errors import ConfigError


def test_every_table_covers_every_emotion() -> None:
    for name, table in PROMPT_SETS.items():
        assert tuple(table) == EMOTIONS, name
        assert all(table[emotion] for emotion in EMOTIONS), name


def test_tables_hold_the_seed_texts() -> None:
    assert [PROMPT_SETS["captions"][e][0] for e in EMOTIONS] == [
        "angry person", "happy person", "disgusted person", "fearful person", "sad person", "surprised person",
    ]
    assert "upper lip is raised in an inverted 'U'" in PROMPT_SETS["face"]["disgust"]
    assert "raised upper eyelids, exposing more sclera (white of the eye)" in PROMPT_SETS["face"]["fear"]
    assert PROMPT_SETS["body"]["sadness"][0] == "There is often a loss of muscle tone"
    assert len(PROMPT_SETS["face"]["fear"]) == 4
    assert len(PROMPT_SETS["body"]["surprise"]) == 3


def test_default_ensemble_has_every_text_in_emotion_order() -> None:
    ensembles = emotion_prompts()
    assert list(ensembles) == list(EMOTIONS)
    for emotion, prompts in ensembles.items():
        expected = (2 * len(PROMPT_SETS["captions"][emotion]) + len(PROMPT_SETS["face"][emotion])
                    + len(PROMPT_SETS["body"][emotion]))
        assert len(prompts) == expected
        assert len(set(prompts)) == len(prompts)
    assert "angry person" in ensembles["anger"]
    assert "a photo of an angry person" in ensembles["anger"]
    assert "a photo of a happy person" in ensembles["happiness"]
    assert "a photo of a face with cheeks are raised" in ensembles["happiness"]
    assert "a photo of a person showing there is often a loss of muscle tone" in ensembles["sadness"]


def test_sets_and_templates_can_be_chosen() -> None:
    captions_only = emotion_prompts(sets=("captions",), templates={"captions": ("{text}",)})
    assert captions_only == {e: [PROMPT_SETS["captions"][e][0]] for e in EMOTIONS}
    faces = emotion_prompts(sets=("face",))
    assert all(p.startswith("a photo of a face with ") for ps in faces.values() for p in ps)


def test_unknown_or_untemplated_sets_are_refused() -> None:
    with pytest.raises(ConfigError, match="voice"):
        emotion_prompts(sets=("captions", "voice"))
    with pytest.raises(ConfigError, match="body"):
        emotion_prompts(sets=("body",), templates={"captions": ("{text}",)})
    with pytest.raises(ConfigError):
        emotion_prompts(sets=())


def test_tidy_fits_texts_into_sentences() -> None:
    assert tidy("lowered eyebrows,") == "lowered eyebrows"
    assert tidy("Moving the head") == "moving the head"


def test_sentiment_prompts_have_three_poles() -> None:
    prompts = sentiment_prompts()
    assert tuple(prompts) == SENTIMENTS == ("negative", "neutral", "positive")
    assert all(len(p) >= 2 for p in prompts.values())


def test_no_prompt_is_cut_by_clips_context_length() -> None:
    open_clip = pytest.importorskip("open_clip")
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    prompts = [p for ps in emotion_prompts().values() for p in ps]
    prompts += [p for ps in sentiment_prompts().values() for p in ps]
    tokens = tokenizer(prompts)
    # an untruncated prompt ends with padding (0) before the 77-token context runs out
    assert (tokens[:, -1] == 0).all()
