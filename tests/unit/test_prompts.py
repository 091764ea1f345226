
import pytest

from interp.data.prompts import PromptSetError, book_corpus, load_file, load_prompts


def test_harmful_keeps_sources_apart_and_ids_are_stable():
    harmful = load_prompts("harmful")
    sources = {p.source for p in harmful}
    assert sources == {"harmbench", "donotanswer"}
    assert len(harmful) == len(load_prompts("harmbench")) + len(load_prompts("donotanswer"))
    assert len(load_prompts("harmbench")) >= 190 and len(load_prompts("donotanswer")) >= 900
    first = load_prompts("harmbench")[0]
    assert first.id == "harmbench-0001" and "dimethylmercury" in first.text
    limited = load_prompts("harmful", limit=10)
    assert {p.source for p in limited} == sources and len(limited) == 10
    assert [p.id for p in load_prompts("harmful", limit=10)] == [p.id for p in limited]


def test_toxic_keeps_categories():
    toxic = load_prompts("toxic")
    assert len(toxic) >= 690 and len({p.category for p in toxic}) == 7
    assert all(p.label == "toxic" for p in toxic)
    sub = load_prompts("toxic", limit=20, seed=1)
    assert len(sub) == 20 and sub == load_prompts("toxic", limit=20, seed=1)
    assert sub != load_prompts("toxic", limit=20, seed=2)


def test_corpus_has_masks_filled():
    docs = book_corpus()
    assert len(docs) > 1000 and not any("[MASK]" in d for d in docs)
    assert sum(len(d) for d in docs) > 200_000


def test_user_files(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"prompt": "hello", "label": "x"}\n{"prompt": "bye", "label": "y"}\n')
    got = load_file(tmp_path / "a.jsonl")
    assert [(p.id, p.text, p.label) for p in got] == [("a-0001", "hello", "x"), ("a-0002", "bye", "y")]
    (tmp_path / "b.csv").write_text("id,text,label\nk1,first,pos\nk2,second,neg\n")
    assert [p.id for p in load_prompts(str(tmp_path / "b.csv"))] == ["k1", "k2"]


@pytest.mark.parametrize("content,match", [
    (b"", "empty"),
    (b'{"text": "ok"}\n{broken', "not valid JSON Lines"),
    (b'{"body": "no text column"}\n', "no text column"),
    (b'{"text": ""}\n', "empty 'text'"),
    (b'{"text": "caf\xe9"}\n', "not UTF-8"),
])
def test_bad_user_files(tmp_path, content, match):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(PromptSetError, match=match):
        load_prompts(str(path))


def test_unknown_set_and_empty_spec():
    with pytest.raises(PromptSetError, match="unknown prompt set 'harmfull'"):
        load_prompts("harmfull")
    with pytest.raises(PromptSetError, match="no prompt sets"):
        load_prompts(" , ")


def test_a_limit_takes_stereotype_pairs_whole():
    from collections import Counter

    from interp.data.prompts import load_prompts

    for limit, seed in [(64, 0), (64, 1), (9, 3)]:
        got = load_prompts("stereotypes", limit, seed)
        pairs = Counter(p.group for p in got)
        assert len(got) == limit - limit % 2 and set(pairs.values()) == {2}  # never half a pair
        assert {p.label for p in got} == {"biased", "neutral"}
        assert [p.id for p in load_prompts("stereotypes", limit, seed)] == [p.id for p in got]  # deterministic
    assert {p.id for p in load_prompts("stereotypes", 64, 0)} != {p.id for p in load_prompts("stereotypes", 64, 1)}
