"""Writes ``question_sets.jsonl``, the question bank of ``generators/format_study.yaml``.

Why generated and not written by hand: the study needs 200+ distinct examples, and a learning
curve measured on a test split whose questions also appear in training would credit the student
with what it memorised. Every one of the 960 questions here is distinct (and so is every set of
four), and each has one right option, known by construction. Four subjects, each its category:
``arithmetic``, ``units``, ``calendar`` and ``words``; 60 sets of four questions each. The right
option's position is drawn uniformly from 1-4, so always answering "1" scores 0.25.

    python samples/format_study/make_question_sets.py   # rewrites question_sets.jsonl, byte for byte
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

SETS_PER_SUBJECT = 60
PER_SET = 4
SEED = 2026
OUT = Path(__file__).with_name("question_sets.jsonl")

DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
WORDS = sorted(set("""
apple river garden window pencil basket candle doctor engine forest guitar harbor island jacket kitten
lemon marble needle orange planet rabbit saddle ticket violin wallet yellow zipper anchor bridge castle
dragon empire feather glacier hammer igloo jungle kettle ladder meadow nickel oyster pepper quilt rocket
silver tunnel umbrella valley walnut button cactus donkey eagle falcon goblet helmet insect jigsaw
kayak lantern magnet napkin orchid parrot quartz ribbon salmon thimble unicorn velvet wizard yogurt
zebra acorn blanket cotton dolphin elbow fossil ginger hazel iris jelly koala lizard mango nutmeg
olive puzzle raisin spider turnip vessel willow bamboo cherry desert ember fabric gravel honey ivory
jasmine kernel lotus mirror noodle opal pillow radish sphinx tomato urchin vanilla wagon
""".split()))
UNITS = [("minutes", "hours", 60), ("seconds", "minutes", 60), ("hours", "days", 24), ("days", "weeks", 7),
         ("centimetres", "metres", 100), ("grams", "kilograms", 1000), ("millimetres", "centimetres", 10),
         ("months", "years", 12)]

Question = tuple[str, list[str], int]  # text, options, index of the right option


def _options(rng: random.Random, right: str, wrong: list[str]) -> tuple[list[str], int]:
    """Four options: the right one at a uniformly drawn place among three distinct wrong ones."""
    distractors = rng.sample(sorted(set(wrong) - {right}), 3)
    place = rng.randrange(4)
    return distractors[:place] + [right] + distractors[place:], place


def _numbers(rng: random.Random, answer: int, spread: int) -> list[str]:
    near = {answer + d for d in range(-spread, spread + 1) if d and answer + d >= 0}
    return [str(n) for n in sorted(near)]


def arithmetic(rng: random.Random) -> Question:
    op = rng.choice("+-x")
    a, b = rng.randint(11, 99), rng.randint(2, 99 if op != "x" else 12)
    if op == "-" and b > a:
        a, b = b, a
    answer = a + b if op == "+" else a - b if op == "-" else a * b
    sign = {"+": "+", "-": "-", "x": "×"}[op]
    options, place = _options(rng, str(answer), _numbers(rng, answer, 12))
    return f"What is {a} {sign} {b}?", options, place


def units(rng: random.Random) -> Question:
    small, large, factor = rng.choice(UNITS)
    n = rng.randint(2, 40)
    answer = n * factor
    wrong = [str(answer + factor * d) for d in (-2, -1, 1, 2) if answer + factor * d > 0]
    wrong += [str(n * f) for f in (factor // 2, factor * 2, factor + 10) if n * f != answer]
    options, place = _options(rng, str(answer), wrong)
    return f"How many {small} are in {n} {large}?", options, place


def calendar(rng: random.Random) -> Question:
    if rng.random() < 0.5:
        start, n = rng.randrange(7), rng.randint(2, 40)
        right = DAYS[(start + n) % 7]
        options, place = _options(rng, right, DAYS)
        return f"Which day of the week comes {n} days after a {DAYS[start]}?", options, place
    start, n = rng.randrange(12), rng.randint(2, 40)
    right = MONTHS[(start + n) % 12]
    options, place = _options(rng, right, MONTHS)
    return f"Which month comes {n} months after {MONTHS[start]}?", options, place


def words(rng: random.Random) -> Question:
    kind = rng.randrange(3)
    if kind == 0:
        four = rng.sample(WORDS, 4)
        right = min(four)
        options, place = _options(rng, right, [w for w in four if w != right] + [right])
        listed = ", ".join(rng.sample(four, 4))
        return f"Which of these words comes first in alphabetical order: {listed}?", options, place
    if kind == 1:
        word = rng.choice(WORDS)
        options, place = _options(rng, str(len(word)), _numbers(rng, len(word), 3))
        return f"How many letters are in the word \"{word}\"?", options, place
    word = rng.choice(WORDS)
    letters = sorted(set("abcdefghijklmnopqrstuvwxyz") - set(word))
    right = rng.choice(word)
    options, place = _options(rng, right, letters)
    return f"Which of these letters appears in the word \"{word}\"?", options, place


SUBJECTS: dict[str, Callable[[random.Random], Question]] = {
    "arithmetic": arithmetic, "units": units, "calendar": calendar, "words": words,
}


def question_sets() -> list[dict[str, object]]:
    rng = random.Random(SEED)
    seen: set[str] = set()
    rows: list[dict[str, object]] = []
    for subject, make in SUBJECTS.items():
        for number in range(1, SETS_PER_SUBJECT + 1):
            questions = []
            while len(questions) < PER_SET:
                text, options, place = make(rng)
                if text in seen:  # every question in the bank is distinct
                    continue
                seen.add(text)
                questions.append({"question": text, "options": options, "answer": str(place + 1)})
            rows.append({"subject": subject, "set": number, "questions": questions})
    return rows


def main() -> None:
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in question_sets())
    OUT.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
