"""The hub loaders parse the real dataset formats; here they read small local files."""

import gzip
import json

import pandas as pd
import pytest

from interp.data import hfdata


def test_wikitext_parquet(tmp_path):
    path = tmp_path / "wikitext-test.parquet"
    pd.DataFrame({"text": ["", " = Valkyria Chronicles = \n", "", " The game began development in 2010 .\n"]}
                 ).to_parquet(path)
    docs = hfdata.wikitext2(path)
    assert docs == [" = Valkyria Chronicles = \n The game began development in 2010 .\n"]


def test_c4_jsonl_gz(tmp_path):
    path = tmp_path / "c4-validation.json.gz"
    with gzip.open(path, "wt") as f:
        for t in ["First document.", "Second document."]:
            f.write(json.dumps({"text": t, "timestamp": "2019-04-25T12:57:54Z", "url": "http://x"}) + "\n")
    assert hfdata.c4(path) == ["First document.", "Second document."]


def test_mmlu_boolq_gsm8k(tmp_path):
    mmlu = tmp_path / "mmlu.parquet"
    pd.DataFrame({"question": ["2+2?"], "subject": ["elementary_mathematics"],
                  "choices": [["3", "4", "5", "6"]], "answer": [1]}).to_parquet(mmlu)
    [item] = hfdata.mmlu(mmlu)
    assert item.choices == ("3", "4", "5", "6") and item.answer == 1 and item.subject == "elementary_mathematics"
    boolq = tmp_path / "boolq.jsonl"
    boolq.write_text(json.dumps({"question": "is the sky blue", "answer": True, "passage": "The sky is blue."}))
    [b] = hfdata.boolq(boolq)
    assert b.choices == ("no", "yes") and b.answer == 1 and "is the sky blue?" in b.question
    gsm = tmp_path / "gsm8k.jsonl"
    gsm.write_text(json.dumps({"question": "Q?", "answer": "She has 3 + 4 = <<3+4=7>>7.\n#### 1,007"}))
    [g] = hfdata.gsm8k(gsm)
    assert g.target == "1007"


def test_errors(tmp_path, monkeypatch):
    with pytest.raises(hfdata.DatasetError, match="does not exist"):
        hfdata.mmlu(tmp_path / "missing.parquet")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"q": "x"}))
    with pytest.raises(hfdata.DatasetError, match="lacks field"):
        hfdata.gsm8k(bad)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(hfdata.DatasetError, match="cannot reach the Hugging Face hub"):
        hfdata.wikitext2()
    with pytest.raises(hfdata.DatasetError, match="lacks '#### <number>'"):
        hfdata.gsm8k_target("no final answer")
