"""Prompt ensembles for zero-shot scoring: the seed's three tables of texts, turned into sentences.

The seed (000, tables 7, 2 and 3) describes each emotion three ways: a short caption
("angry person"), Ekman's facial descriptions and his body descriptions. ``PROMPT_SETS`` keeps them
verbatim, as data; ``emotion_prompts`` turns them into sentences with one small template per set, so
that CLIP sees text shaped like its training captions ("a photo of ..."). Each class's text embedding
is then the normalised mean of its prompts' embeddings (engine/text.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType

from affectstream.engine.labels import EMOTIONS
from affectstream.errors import ConfigError

PromptTable = Mapping[str, tuple[str, ...]]  # emotion -> texts

# Seed table 7: the baseline's short captions.
CAPTIONS: PromptTable = MappingProxyType({
    "anger": ("angry person",),
    "happiness": ("happy person",),
    "disgust": ("disgusted person",),
    "fear": ("fearful person",),
    "sadness": ("sad person",),
    "surprise": ("surprised person",),
})

# Seed table 2: Ekman's facial expressions, copied verbatim (stray commas included).
FACE: PromptTable = MappingProxyType({
    "anger": (
        "eyebrows pulled down and together",
        "eyes glare opened wide",
        "staring hard, lips pressed tightly pressed, narrowing of lips corners",
    ),
    "happiness": (
        "eyes are narrowed and there is some wrinkling around the eyes",
        "cheeks are raised",
        "lips are pulled back and teeth are exposed in smile",
    ),
    "disgust": (
        "lowered eyebrows,",
        "wrinkling on the side and bridge of the nose",
        "upper lip is raised in an inverted 'U'",
        "lower lip raised and slightly protruding",
    ),
    "fear": (
        "eyebrows raised and pulled together on horizontal form",
        "raised upper eyelids, exposing more sclera (white of the eye)",
        "tensed lower eyelids",
        "jaw dropped open and lips stretched horizontally backwards",
    ),
    "sadness": (
        "inner corners of the eyebrows pulled up and together",
        "upper eyelids drooped and eyes looking down",
        "lip corners pulled downward",
    ),
    "surprise": (
        "eyebrows raised, but not drawn together",
        "upper eyelids raised, lower eyelids neutral",
        "jaw dropped down",
    ),
})

# Seed table 3: body expressions, copied verbatim.
BODY: PromptTable = MappingProxyType({
    "anger": (
        "leaning forward with their head/chin jutting forward and puffing their chest/body to appear larger",
    ),
    "happiness": ("posture upright and elevated", "posture still and relaxed"),
    "disgust": (
        "turning the head or body away from the source of disgust",
        "covering the nose/mouth and hunching over",
    ),
    "fear": ("mobilizing posture", "immobilizing- freezing or moving away"),
    "sadness": (
        "There is often a loss of muscle tone",
        "a lowered or hunched posture",
        "looking away and/or downwards",
    ),
    "surprise": (
        "Moving the head",
        "bringing the hands up to shield the face",
        "and/or stepping backwards away from surprising object",
    ),
})

PROMPT_SETS: Mapping[str, PromptTable] = MappingProxyType({"captions": CAPTIONS, "face": FACE, "body": BODY})

# One sentence shape per set; ``{text}`` is the table's text, ``{a}`` the article "a"/"an" before it.
# Captions also go in bare, as the seed's baseline used them.
DEFAULT_TEMPLATES: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "captions": ("{text}", "a photo of {a} {text}"),
    "face": ("a photo of a face with {text}",),
    "body": ("a photo of a person showing {text}",),
})

SENTIMENTS: tuple[str, ...] = ("negative", "neutral", "positive")

# Not from the seed (it has no sentiment baseline): plain captions in the same style as table 7.
SENTIMENT_PROMPTS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "negative": (
        "a photo of a person with a negative expression",
        "a photo of an unhappy, upset person",
        "a person reacting badly to something",
    ),
    "neutral": (
        "a photo of a person with a neutral expression",
        "a photo of a calm person with a blank face",
        "a person listening without any reaction",
    ),
    "positive": (
        "a photo of a person with a positive expression",
        "a photo of a pleased, cheerful person",
        "a person reacting well to something",
    ),
})


def emotion_prompts(
    sets: Sequence[str] = ("captions", "face", "body"),
    templates: Mapping[str, Sequence[str]] = DEFAULT_TEMPLATES,
) -> dict[str, list[str]]:
    """The prompt ensemble of each emotion, keyed in ``EMOTIONS`` order, from the chosen tables.

    Every text of a chosen set is tidied (see :func:`tidy`) and put into each of that set's templates.
    """
    unknown = [name for name in sets if name not in PROMPT_SETS]
    if unknown or not sets:
        raise ConfigError(f"prompt sets {unknown or 'none'} asked for; choose among {list(PROMPT_SETS)}")
    untemplated = [name for name in sets if not templates.get(name)]
    if untemplated:
        raise ConfigError(f"no template given for prompt sets {untemplated}: add one with a '{{text}}' field")
    ensembles: dict[str, list[str]] = {emotion: [] for emotion in EMOTIONS}
    for name in sets:
        for emotion in EMOTIONS:
            for text in PROMPT_SETS[name][emotion]:
                ensembles[emotion].extend(fill(template, tidy(text)) for template in templates[name])
    return ensembles


def sentiment_prompts() -> dict[str, list[str]]:
    """The prompt ensembles of the three sentiment poles, keyed negative, neutral, positive."""
    return {pole: list(SENTIMENT_PROMPTS[pole]) for pole in SENTIMENTS}


def tidy(text: str) -> str:
    """Fit a table text into the middle of a sentence: no trailing comma, lower-case first letter."""
    text = text.strip().rstrip(",;").strip()
    return text[:1].lower() + text[1:]


def fill(template: str, text: str) -> str:
    article = "an" if text[:1].lower() in "aeiou" else "a"
    return template.format(text=text, a=article)
