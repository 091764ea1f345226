"""Wanda calibration from book, WikiText-2 (local hub-format file) or the user's own text file: the windows are
that file's tokens, the masks follow the corpus, the same corpus as the perplexity evaluation keeps its windows
out, and a bad corpus or file is refused in one line before a model loads."""

from __future__ import annotations

import json
import random

import pytest

from interp.interventions.prune import PruneSpec
from interp.interventions.pruning.calibdata import CalibData, CalibrationError, calibration_windows
from interp.studies.config_file import build
from interp.studies.parts import CalibPart, EvalPart
from interp.studies.weights_config import WeightsCfg
from tests.conftest import byte_tokenizer, tiny_llama

WORDS = ["orbit", "quartz", "meadow", "lantern", "copper", "tundra", "violin", "harbor", "nectar", "zephyr"]


def _docs(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(15, 30))) for _ in range(n)]


@pytest.fixture(scope="module")
def tiny():
    """The 4-layer tiny Llama, built once for this module (apply restores it exactly after every test)."""
    from interp.model.loading import wrap

    return wrap(tiny_llama(), byte_tokenizer(), name="tiny-llama", revision="seed0")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A .txt corpus (one document per line), a JSONL one ('text' column) and a WikiText-2-format JSONL."""
    d = tmp_path_factory.mktemp("calib")
    txt, jsonl, wiki = d / "mine.txt", d / "mine.jsonl", d / "wiki.jsonl"
    docs = _docs(40, 0)
    txt.write_text("\n".join(docs[:20]) + "\n\n" + "\n".join(docs[20:]) + "\n")  # a blank line is no document
    jsonl.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    rows = [" = Heading = \n", *(t + " \n" for t in _docs(30, 1))]  # hub rows: lines with their newlines
    wiki.write_text("".join(json.dumps({"text": r}) + "\n" for r in rows))
    return {"txt": txt, "jsonl": jsonl, "wiki": wiki, "docs": docs, "wiki_text": "".join(rows)}


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("kind", ["txt", "jsonl"])
def test_windows_are_the_text_files_tokens(tiny, files, kind):
    data = CalibData(source="text", path=str(files[kind]), windows=4, length=32, seed=3)
    windows, ds = calibration_windows(tiny.tokenizer, data)
    ids = _ids(tiny.tokenizer, "\n\n".join(files["docs"]))
    assert len(windows) == 4 and ds["name"] == "text" and ds["sha256"] == data.sha256
    assert ds["corpus_tokens"] == len(ids)
    for start, w in zip(ds["starts"], windows):
        assert w == ids[start:start + 32]


def test_text_and_jsonl_give_the_same_windows(tiny, files):
    a = calibration_windows(tiny.tokenizer, CalibData(source="text", path=str(files["txt"]), windows=3, length=32))
    b = calibration_windows(tiny.tokenizer, CalibData(source="text", path=str(files["jsonl"]), windows=3, length=32))
    assert a[0] == b[0]


def test_windows_of_a_local_wikitext2_file(tiny, files):
    data = CalibData(source="wikitext2", path=str(files["wiki"]), windows=5, length=32, seed=1)
    windows, ds = calibration_windows(tiny.tokenizer, data)
    ids = _ids(tiny.tokenizer, files["wiki_text"])  # the article stream, as the perplexity evaluation reads it
    assert ds["name"] == "wikitext2" and ds["source"] == str(files["wiki"])
    assert all(w == ids[s:s + 32] for s, w in zip(ds["starts"], windows))


def test_masks_follow_the_calibration_corpus(tiny, files):
    def mask(calib):
        with PruneSpec("wanda", 0.5, ("down",), calibration="oneshot", calib=calib).apply(tiny):
            return [b.mlp.down_proj.weight == 0 for b in tiny.model.model.layers]

    book = mask(CalibData(windows=4, length=32))
    mine = mask(CalibData(source="text", path=str(files["txt"]), windows=4, length=32))
    assert all(m.float().mean() == 0.5 for m in mine)
    differ = sum(int((a != b).sum()) for a, b in zip(book, mine))
    assert differ > 0.05 * sum(m.numel() for m in mine)  # a different corpus measures different input norms


def test_same_corpus_as_the_evaluation_keeps_its_windows_out(tiny, files):
    from interp.evals.ppl import make_windows

    path = str(files["txt"])
    cfg = WeightsCfg(budget="smoke", methods=("wanda",), eval=EvalPart(corpus="text", corpus_path=path, budget="ppl=512"),
                     calib=CalibPart(corpus="text", path=path, windows=6))
    calib = cfg.calib_data(tiny)
    assert calib.exclude is not None
    length, n_tokens, seed = calib.exclude
    scored = set(make_windows(tiny.tokenizer, files["docs"], length, n_tokens, seed).windows)
    ids = _ids(tiny.tokenizer, "\n\n".join(files["docs"]))
    spans = [i * length for i in range(len(ids) // length) if tuple(ids[i * length:(i + 1) * length]) in scored]
    assert len(spans) == len(scored) > 0
    _, ds = calibration_windows(tiny.tokenizer, calib)
    for start in ds["starts"]:
        assert all(start + calib.length <= s or s + length <= start for s in spans)
    # another corpus (or another file) for the evaluation: nothing to keep out
    other = WeightsCfg(budget="smoke", methods=("wanda",), calib=CalibPart(corpus="text", path=path))
    assert other.calib_data(tiny).exclude is None


def test_the_file_content_is_the_identity(tiny, tmp_path, files):
    path = tmp_path / "c.txt"
    path.write_text("\n".join(files["docs"]))
    cfg = WeightsCfg(budget="smoke", methods=("wanda",), calib=CalibPart(corpus="text", path=str(path)))
    spec = PruneSpec("wanda", 0.5, calib=cfg.calib_data(tiny))
    book = PruneSpec("wanda", 0.5, calib=WeightsCfg(budget="smoke").calib_data(tiny))
    from interp.interventions import describe, from_json, to_json

    assert not {"path", "sha256"} & set(describe(book)["calib"])  # book runs keep their identity
    assert describe(spec)["calib"]["sha256"] == spec.calib.sha256
    path.write_text("\n".join(reversed(files["docs"])))
    again = WeightsCfg(budget="smoke", methods=("wanda",), calib=CalibPart(corpus="text", path=str(path)))
    assert again.calib_data(tiny) != spec.calib  # a rewritten file is another calibration set
    with pytest.raises(CalibrationError, match="changed since this spec was made"):
        calibration_windows(tiny.tokenizer, from_json(to_json(spec)).calib)


@pytest.mark.parametrize("values,match", [
    ({"calib_corpus": "text"}, r"give its path in calib_path \(--calib-path\)"),
    ({"calib_corpus": "text", "calib_path": "/nonexistent/x.txt"}, "'/nonexistent/x.txt' does not exist"),
    ({"calib_path": "{txt}"}, r"set \[weights.calib\] corpus \(--calib-corpus\) too"),
    ({"calib_corpus": "text", "calib_path": "{pdf}"}, "cannot read calibration file"),
    ({"calib_corpus": "wikitext2", "calib_path": "{txt}"}, "cannot read calibration file"),
])
def test_bad_calibration_settings_are_refused_in_one_line(files, tmp_path, values, match):
    pdf = tmp_path / "x.pdf"
    pdf.write_bytes(b"%PDF")
    values = {k: v.format(txt=files["txt"], pdf=pdf) for k, v in values.items()}
    with pytest.raises(ValueError, match=match) as e:
        build(WeightsCfg, {"budget": "smoke", **values})  # the flag names, as invoke weights passes them
    assert "\n" not in str(e.value)


def test_unknown_corpus_names_the_flag_and_the_closest():
    from interp.commands.settings import flag_types
    from interp.validate import InvalidValue

    spec = flag_types("interp.studies.weights_config:WeightsCfg", "calib_corpus")["calib_corpus"]
    with pytest.raises(InvalidValue, match=r"--calib-corpus takes one of book, wikitext2, c4, text, not 'wikitext' "
                                           r"\(did you mean wikitext2\?\)"):
        spec.parse("wikitext", "--calib-corpus")


def test_a_file_without_a_text_column_is_refused_before_any_point(tiny, store, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"content": "no text column here"}\n')
    from interp.studies.weights import run_weights

    cfg = WeightsCfg(budget="smoke", methods=("wanda",), calib=CalibPart(corpus="text", path=str(bad)))
    with pytest.raises(ValueError, match="lacks field") as e:
        run_weights(tiny, store, cfg, progress=False)
    assert "\n" not in str(e.value)
    with store.connect(read_only=True) as con:
        assert con.execute("SELECT count(*) FROM evals").fetchone()[0] == 0


def test_calibration_flags_round_trip_through_print_config(files, tmp_path):
    from interp.provenance import config_hash
    from interp.studies.config_file import dumps, load

    flags = {"budget": "smoke", "calib_corpus": "text", "calib_path": str(files["jsonl"]), "calib_windows": 3}
    model, cfg = load("weights", WeightsCfg, None, flags, {})
    path = tmp_path / "w.toml"
    path.write_text(dumps("weights", model, cfg))
    assert '[weights.calib]\ncorpus = "text"\npath = ' in path.read_text()
    _, again = load("weights", WeightsCfg, str(path), {}, {})
    assert again == cfg and config_hash(again.identity()) == config_hash(cfg.identity())
