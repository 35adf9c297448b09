"""Class names and prompt templates for zero-shot classification (data, not code).

A template holds one `{}` that is filled with a class name.
"""

from __future__ import annotations

# The bundled demo data: scikit-learn's handwritten digits.
DIGITS_CLASSNAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

# Zero-shot prompts for the held-out digits: deliberately not the templates the training captions
# were written from (siglip.digits.CAPTION_TEMPLATES).
DIGITS_TEMPLATES = [
    "a picture of the number {}.",
    "an image of a handwritten {}.",
    "the digit {}.",
    "a {} written by hand.",
]
