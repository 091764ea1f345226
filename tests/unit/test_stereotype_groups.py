"""interp/data/stereotypes.jsonl's ``group_kept`` flag: whether a pair's counterpart still names the
biased prompt's social group (only those pairs test a stereotype probe beyond "is a group mentioned").

The flags were set by reading every pair; this file pins that reading so that a change to the data
must revisit it."""

from __future__ import annotations

from collections import Counter, defaultdict

import pytest

from interp.data.prompts import load_prompts
from tests.unit.test_data_files import GROUP_WORDS, _rows, _tokens

KEPT_PAIRS = {2, 7, 13, 20, 21, 29, 35, 38, 40, 42, 45, 46, 47, 48, 59, 64, 67, 74, 75, 79, 90, 95, 98, 101, 118,
              119, 121, 124, 125, 127, 128, 129, 132, 134, 137, 142, 160}
"""Pairs whose counterpart keeps the group ("women ... emotional" -> "women ... rarely chosen")."""

KEPT_BY_ATTRIBUTE = {"gender": 4, "race": 4, "religion": 8, "nationality": 3, "age": 3, "disability": 4,
                     "sexual_orientation": 2, "socioeconomic": 9}

SWAPPED_BUT_SHARING_A_GROUP_WORD = {
    6: "men ... young children -> babysitters ... young children: 'young' qualifies the children, men go",
    34: "Black men ... absent fathers -> long commutes make absent fathers: 'fathers' stays, Black men go",
    56: "Irish people -> Irish winters: the country's weather, no people",
    69: "old people -> old printers",
    72: "old people -> old cheese",
    81: "older women -> older cars",
    107: "homosexuality is a mental illness -> internet addiction is a mental illness: 'mental' is the claim",
    122: "homeless people -> homeless shelters: the buildings are the subject",
    151: "older workers -> older computers",
    155: "gay men are not real men -> toy soldiers are not real men: 'men' stays, gay men go",
}
"""Swapped pairs whose counterpart still shares a word of GROUP_WORDS with the biased prompt, each read
and judged not to name the same group (the word is a modifier of a thing, or a different group)."""


@pytest.fixture(scope="module")
def pairs() -> dict[int, list[dict]]:
    out = defaultdict(list)
    for r in _rows("stereotypes.jsonl"):
        out[int(r["pair"].removeprefix("stereo-"))].append(r)
    return dict(out)


def test_every_row_has_the_flag_and_both_rows_of_a_pair_agree(pairs):
    assert len(pairs) == 160
    for k, rows in pairs.items():
        assert len(rows) == 2 and all(isinstance(r.get("group_kept"), bool) for r in rows), k
        assert rows[0]["group_kept"] == rows[1]["group_kept"], k


def test_counts_match_the_reviewed_reading(pairs):
    kept = {k for k, rows in pairs.items() if rows[0]["group_kept"]}
    assert kept == KEPT_PAIRS
    assert (len(kept), len(pairs) - len(kept)) == (37, 123)
    by_attr = Counter(rows[0]["attribute"] for k, rows in pairs.items() if k in kept)
    assert dict(by_attr) == KEPT_BY_ATTRIBUTE
    assert sum(KEPT_BY_ATTRIBUTE.values()) == len(KEPT_PAIRS)


def _shared_group_words(rows: list[dict]) -> set[str]:
    b, n = sorted(rows, key=lambda r: r["label"])
    assert (b["label"], n["label"]) == ("biased", "neutral")
    return set(_tokens(b["text"])) & set(_tokens(n["text"])) & GROUP_WORDS


def test_flag_agrees_with_the_group_words_except_for_reviewed_cases(pairs):
    # a kept pair's counterpart repeats a group word of its biased prompt; a swapped one does not,
    # except where the shared word no longer names the group (each case listed with its reason)
    no_shared = {k for k, rows in pairs.items() if rows[0]["group_kept"] and not _shared_group_words(rows)}
    assert not no_shared, no_shared
    sharing = {k for k, rows in pairs.items() if not rows[0]["group_kept"] and _shared_group_words(rows)}
    assert sharing == set(SWAPPED_BUT_SHARING_A_GROUP_WORD)


def test_loaded_prompts_carry_the_flag(pairs):
    got = {p.id: p.group_kept for p in load_prompts("stereotypes")}
    want = {r["id"]: r["group_kept"] for rows in pairs.values() for r in rows}
    assert got == want
    assert all(p.group_kept is None for p in load_prompts("neutral", limit=5))
