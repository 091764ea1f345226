"""Study settings from TOML files and flags: round-trips keep the run identity, flags override the file,
and every bad key, type and value is refused in one line before any model loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from interp.provenance import config_hash
from interp.studies.config_file import ConfigError, build, dumps, load, parts_of
from interp.studies.heads_config import HeadsCfg
from interp.studies.layers_config import LayersCfg
from interp.studies.parts import EvalPart, HealPart
from interp.studies.safety_config import SafetyCfg
from interp.studies.weights_config import WeightsCfg
from interp.validate import InvalidValue

STUDIES = {"layers": LayersCfg, "weights": WeightsCfg, "heads": HeadsCfg, "safety": SafetyCfg}
FLAGS = {  # what a user types, as the command's flags hand it over (strings)
    "layers": {"budget": "smoke", "heal_steps": "120", "heal_alpha": "8", "heal_dropout": "0.05",
               "heal_schedule": "cosine", "heal_warmup": "100", "sizes": "2,4", "heal_sizes": "4", "chat": "yes",
               "heal_rank": "4", "heal_lr": "0.001", "heal_batch": "2", "heal_strategies": "angular,deepest",
               "tasks": "ppl,facts", "eval_budget": "ppl=128,facts=4", "corpus": "c4"},
    "weights": {"budget": "smoke", "methods": "wanda", "modules": "q,k,v,o,gate,up,down", "module_rates": "0.5",
                "mixed": "attn=0.2:mlp=0.6,attn=0.6:mlp=0.2", "nm": "2:4", "calib_corpus": "c4", "calib_windows": "3",
                "calibration": "oneshot", "tasks": "ppl,facts", "eval_budget": "ppl=128"},
    "heads": {"budget": "smoke", "router_keep": "0.25,0.5", "lb_coef": "0.1", "eval_budget": "ppl=256,facts=4",
              "corpus": "c4", "router_steps": "3", "router_lr": "0.005", "train_seqs": "5", "heldout_seqs": "2",
              "eval_tasks": "ppl"},
    "safety": {"budget": "smoke", "probe_hooks": "resid_pre,resid_post", "probe_layers": "1,2", "C": "0.5",
               "alphas": "-2,2", "corpus": "wikitext2", "steer_from": "3:actadd[harmful@resid_pre8/last +1]",
               "folds": "4", "permutations": "20", "ridge": "2", "test_frac": "0.25", "positions": "last",
               "eval_budget": "ppl=128,refusal=4"},
}


def _identity(cfg) -> str:
    if hasattr(cfg, "identity"):  # layers and weights: the evaluation config joins the study's fields in the run
        return config_hash({**cfg.identity(), "eval": cfg.eval_cfg().describe()})
    return config_hash(cfg.describe())


def _load_flags(study: str, flags: dict):
    from interp.commands.settings import flag_types

    types = flag_types(f"{type(STUDIES[study]()).__module__}:{STUDIES[study].__name__}", *flags)
    parsed = {k: types[k].parse(v, "--" + k.replace("_", "-")) for k, v in flags.items()}
    return load(study, STUDIES[study], None, parsed, {})


@pytest.mark.parametrize("study", STUDIES)
def test_printed_config_rebuilds_the_same_run(study, tmp_path):
    model, cfg = _load_flags(study, FLAGS[study])
    path = tmp_path / f"{study}.toml"
    path.write_text(dumps(study, model, cfg))
    model2, cfg2 = load(study, STUDIES[study], str(path), {}, {})
    assert (model2, cfg2) == (model, cfg)
    assert _identity(cfg2) == _identity(cfg)
    assert dumps(study, model2, cfg2) == path.read_text()
    for part in parts_of(STUDIES[study]):  # every part is a nested table of the printed file
        assert f"[{study}.{part}]" in path.read_text()
    # flags override the file, and change the identity
    _, cfg3 = load(study, STUDIES[study], str(path), {"seed": 7}, {"dtype": "bfloat16"})
    assert cfg3.seed == 7 and _identity(cfg3) != _identity(cfg)


def test_flags_reach_the_study_objects():
    _, layers = _load_flags("layers", FLAGS["layers"])
    heal = layers.heal_cfg()
    assert (heal.alpha, heal.dropout, heal.schedule, heal.warmup, heal.rank) == (8.0, 0.05, "cosine", 100, 4)
    assert layers.chat is True and layers.sizes == (2, 4)
    _, weights = _load_flags("weights", FLAGS["weights"])
    plan = weights.plan
    assert plan.single_modules == ("q", "k", "v", "o", "gate", "up", "down") and plan.single_rates == (0.5,)
    assert plan.mixed == ((("attn", 0.2), ("mlp", 0.6)), (("attn", 0.6), ("mlp", 0.2)))
    assert plan.uniform == () and plan.global_rates == () and plan.nm == ("2:4",)
    _, safety = _load_flags("safety", FLAGS["safety"])
    assert safety.probe_cfg().C == 0.5 and safety.alphas == (-2.0, 2.0)


def test_new_fields_at_their_defaults_keep_old_identities():
    """Runs stored before the heal recipe / corpus / user-sweep fields existed keep their identity."""
    layers = LayersCfg(budget="smoke")
    assert not {"heal_alpha", "heal_dropout", "heal_schedule", "heal_warmup", "corpus", "gsm8k_path"} & set(
        layers.identity())
    assert set(WeightsCfg(budget="smoke").identity()) == {"study", "budget", "seed", "methods", "calibration"}
    from interp.interventions import describe
    from interp.interventions.heal import HealCfg
    from interp.interventions.layers import HealedDrop

    d = describe(HealedDrop((1,), HealCfg(steps=2)))["heal"]
    assert not {"dropout", "schedule", "warmup"} & set(d)
    assert describe(HealedDrop((1,), HealCfg(steps=2, schedule="cosine")))["heal"]["schedule"] == "cosine"


def test_data_files_join_the_identity_by_content(tmp_path):
    data = tmp_path / "gsm8k.jsonl"
    data.write_text('{"question": "1+1?", "answer": "#### 2"}\n')
    before = _identity(LayersCfg(budget="smoke", eval=EvalPart(gsm8k_path=str(data))).eval_cfg())
    data.write_text('{"question": "2+2?", "answer": "#### 4"}\n')
    after = _identity(LayersCfg(budget="smoke", eval=EvalPart(gsm8k_path=str(data))).eval_cfg())
    assert before != after


@pytest.mark.parametrize("text,match", [
    ("[layers]\nheal_rnk = 3\n", "unknown key 'heal_rnk' (did you mean heal_rank?)"),
    ("[layers]\nheal_rank = 'x'\n", "heal_rank takes a whole number, not 'x'"),
    ("[layers]\nchat = 'ture'\n", "chat takes true or false, not 'ture' (did you mean true?)"),
    ("[layers]\nsizes = [1, 'a']\n", "sizes (item 2) takes a whole number"),
    ("[layer]\nheal_rank = 3\n", "unknown table [layer] (did you mean [layers]?)"),
    ("[model]\nspce = 'x'\n", "unknown key 'spce' (did you mean spec?)"),
    ("layers = 3\n", "'layers' must be a table"),
    ("[layers\n", "is not valid TOML"),
    ("[layers.heal]\nrnk = 3\n", "[layers.heal]: unknown key 'rnk' (did you mean rank?)"),
    ("[layers.heal]\nrank = 'x'\n", "[layers.heal] rank takes a whole number, not 'x'"),
    ("[layers.heal]\nrank = 0\n", "[layers.heal] rank (--heal-rank) takes a whole number of at least 1, not 0"),
    ("[layers.eval]\ntasks = ['ppx']\n", "[layers.eval] tasks (--tasks): unknown task 'ppx' (did you mean ppl?)"),
    ("[layers]\nheal_rank = 3\n[layers.heal]\nrank = 4\n", "[layers] heal_rank and [layers.heal] rank are the same"),
    ("[layers]\nheal = 3\n", "'layers.heal' must be a table ([layers.heal])"),
    ("[layers]\nhea = 3\n", "(did you mean [layers.heal]?)"),
])
def test_bad_files_are_refused_in_one_line(tmp_path, text, match):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises((ConfigError, InvalidValue)) as e:
        load("layers", LayersCfg, str(path), {}, {})
    assert match in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("study,values,match", [
    ("layers", {"heal_warmup": 300, "heal_steps": 10}, r"\[layers.heal\] warmup \(--heal-warmup\) .* below steps"),
    ("layers", {"heal_schedule": "cosin", "heal_steps": 10}, "did you mean cosine"),
    ("layers", {"corpus_path": "x"}, r"set \[layers.eval\] corpus \(--corpus\) too"),
    ("layers", {"corpus": "c4", "corpus_path": "/nonexistent"}, "does not exist"),
    ("weights", {"rates": (0.05, 1.5)}, "between 0 and 1"),
    ("weights", {"modules": ("qq",), "module_rates": (0.5,)}, "not 'qq' \\(did you mean q\\?\\)"),
    ("weights", {"modules": ("q",)}, "go together"),
    ("weights", {"nm": ("4:2",)}, "not '4:2'"),
    ("weights", {"mixed": ((("atn", 0.2),),)}, "not 'atn=0.2' \\(did you mean attn=0.2\\?\\)"),
    ("heads", {"router_keep": (1.5,)}, r"\[heads.router\] keep \(--router-keep\)"),
    ("safety", {"probe_hooks": ("mlp_out",)}, "residual stream"),
])
def test_out_of_range_values_are_refused(study, values, match):
    with pytest.raises(ValueError, match=match):
        load(study, STUDIES[study], None, values, {})


def test_missing_file_names_the_fix():
    with pytest.raises(ConfigError, match="--print-config"):
        load("layers", LayersCfg, "/nonexistent/cfg.toml", {}, {})


def test_user_prompt_files_stand_in_for_the_built_in_sets(tmp_path):
    """--harmful/--harmless: the files' prompts take the built-in sets' names and labels (so probes, directions,
    edits and the refusal evaluation use them alike), and their content, not their path, is the identity."""
    from interp.data.prompts import load_prompts
    from interp.evals.refusal import heldout_harmful
    from interp.studies.safety import heldout_ids

    harmful, harmless = tmp_path / "mine.jsonl", tmp_path / "calm.csv"
    harmful.write_text("".join(f'{{"id": "h{i}", "text": "harmful request number {i}"}}\n' for i in range(40)))
    harmless.write_text("prompt\n" + "".join(f"a kind request number {i}\n" for i in range(40)))
    cfg = SafetyCfg(budget="smoke", harmful=str(harmful), harmless=str(harmless))
    prompts = load_prompts(cfg.prompt_sets(), cfg.per_set, cfg.seed)
    mine = [p for p in prompts if p.source == "mine.jsonl"]
    calm = [p for p in prompts if p.source == "calm.csv"]
    assert len(mine) == len(calm) == cfg.per_set
    assert {(p.dataset, p.label) for p in mine} == {("harmful", "harmful")}
    assert {(p.dataset, p.label) for p in calm} == {("neutral", "neutral")}
    assert not any(p.dataset in ("harmful", "neutral") and p.source not in ("mine.jsonl", "calm.csv") for p in prompts)
    held = heldout_harmful(None, cfg.eval_cfg().harmful_path)
    assert held and {i for i, _ in held} <= {f"h{i}" for i in range(40)} and {i for i, _ in held} <= heldout_ids(cfg)
    before = config_hash(cfg.describe())
    harmful.write_text(harmful.read_text().replace("number 3", "number three"))
    assert config_hash(SafetyCfg(budget="smoke", harmful=str(harmful), harmless=str(harmless)).describe()) != before
    assert "harmful" not in SafetyCfg(budget="smoke").describe()  # runs without files keep their identity


@pytest.mark.parametrize("text,match", [
    ('{"text": "ok"}\n[1, 2]\n', "line 2 is a JSON list"),
    ('{"txt": "no text column"}\n', "no text column"),
])
def test_bad_user_prompt_files_are_refused_before_a_model_loads(tmp_path, text, match):
    path = tmp_path / "bad.jsonl"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        SafetyCfg(budget="smoke", harmful=str(path))


@pytest.mark.parametrize("study", ["heads", "safety", "weights", "layers"])
def test_every_study_evaluates_perplexity_on_the_chosen_corpus(study, tmp_path):
    """corpus / corpus_path: the evaluation reads the user's file (its content in the identity); unset, a
    study keeps the identity it had before the setting existed."""
    from interp.evals.ppl import corpus_texts

    cls = STUDIES[study]
    plain = cls(budget="smoke")
    assert "corpus" not in _describe(plain) and "corpus_path" not in _describe(plain)
    path = tmp_path / "mine.txt"
    path.write_text("first document of mine\nsecond one\n")
    cfg = build(cls, {"budget": "smoke", "corpus": "text", "corpus_path": str(path)})
    ev = cfg.eval_cfg()
    assert corpus_texts(ev) == (["first document of mine", "second one"], str(path))
    assert ev.describe()["data_sha256"]["text_path"]
    before = _identity(cfg)
    path.write_text("another text\n")
    assert _identity(build(cls, {"budget": "smoke", "corpus": "text", "corpus_path": str(path)})) != before
    with pytest.raises(ValueError, match=rf"\[{study}.eval\] corpus_path \(--corpus-path\) is for the wikitext2, c4, "
                                         "text corpus"):
        cls(budget="smoke", eval=EvalPart(corpus_path=str(path)))


def _describe(cfg) -> dict:
    return cfg.identity() if hasattr(cfg, "identity") else cfg.describe()


OUT_OF_RANGE = [  # (study, key, value): every study's range checks name the key as the file and the flag write it
    ("layers", "budget", "quik"), ("layers", "strategies", ("angulr",)), ("layers", "heal_strategies", ("x",)),
    ("layers", "heal_steps", -1), ("layers", "sizes", (0,)), ("layers", "limit", 0), ("layers", "max_tokens", 0),
    ("layers", "batch_size", 0), ("layers", "heal_rank", 0), ("layers", "heal_batch", 0), ("layers", "heal_lr", 0.0),
    ("layers", "heal_alpha", -1.0), ("layers", "heal_dropout", 1.0), ("layers", "heal_schedule", "cosin"),
    ("layers", "heal_warmup", -1), ("layers", "corpus", "wiki"),
    ("weights", "budget", "ful"), ("weights", "methods", ("wand",)), ("weights", "calibration", "one-shot"),
    ("weights", "calib_windows", 0), ("weights", "rates", (1.5,)), ("weights", "module_rates", (0.0,)),
    ("weights", "group_rates", (2.0,)), ("weights", "modules", ("qq",)), ("weights", "nm", ("4:2",)),
    ("weights", "mixed", ((("atn", 0.2),),)), ("weights", "calib_corpus", "books"),
    ("heads", "budget", "huge"), ("heads", "text_seqs", 0), ("heads", "heldout_seqs", 0), ("heads", "seq_len", 2),
    ("heads", "router_steps", -1), ("heads", "methods", ("gradiant",)), ("heads", "ablation_layers", -1),
    ("heads", "prune_fracs", (1.0,)), ("heads", "router_keep", (0.0,)), ("heads", "batch_size", 0),
    ("safety", "budget", "huge"), ("safety", "per_set", 3), ("safety", "probe_hooks", ("mlp_out",)),
    ("safety", "direction_hook", "resid_mid"), ("safety", "positions", ("first",)),
    ("safety", "candidate_positions", ("first",)), ("safety", "test_frac", 1.0), ("safety", "baselines", 1),
    ("safety", "probe_layers", "stride:0"), ("safety", "candidate_layers", "a,b"), ("safety", "steer_from", "x"),
    # the shared parts: evaluation, healing, calibration, router, probes
    ("layers", "heal_sizes", (0,)), ("layers", "tasks", ("ppx",)), ("layers", "eval_budget", "quik"),
    ("layers", "mmlu_path", "/nonexistent/mmlu.jsonl"), ("weights", "tasks", ("facs",)),
    ("weights", "eval_budget", "ppl=10,fcts=2"), ("weights", "corpus", "c5"), ("weights", "calib_path", "/x.txt"),
    ("heads", "eval_tasks", ("ppx",)), ("heads", "eval_budget", "smok"), ("heads", "router_lr", 0.0),
    ("heads", "lb_coef", -1.0), ("heads", "router_batch", 0), ("heads", "train_seqs", 0),
    ("heads", "lm_eval", ("ppl2",)), ("safety", "eval_budget", "enormous"), ("safety", "folds", 1),
    ("safety", "permutations", 0), ("safety", "ridge", 0.0), ("safety", "C", 0.0), ("safety", "corpus", "book2"),
]
SUGGESTS = {("layers", "budget"): "quick", ("layers", "strategies"): "angular", ("layers", "heal_schedule"): "cosine",
            ("weights", "budget"): "full", ("weights", "methods"): "wanda", ("weights", "calibration"): "oneshot",
            ("weights", "modules"): "q", ("heads", "methods"): "gradient", ("safety", "direction_hook"): "resid_pre",
            ("weights", "calib_corpus"): "book", ("layers", "corpus"): "wikitext2", ("layers", "tasks"): "ppl",
            ("layers", "eval_budget"): "quick", ("weights", "tasks"): "facts", ("weights", "eval_budget"): "facts",
            ("heads", "eval_tasks"): "ppl", ("heads", "eval_budget"): "smoke", ("safety", "corpus"): "book"}


@pytest.mark.parametrize("study,key,value", OUT_OF_RANGE, ids=lambda v: str(v))
def test_range_checks_name_the_key_and_the_closest_name(study, key, value):
    """Built in Python (the __post_init__ checks) or read from a file or flags (the validator's specs), the
    refusal is one InvalidValue line naming the key as TOML writes it and as its flag."""
    cls = STUDIES[study]
    extra = {"heal_steps": 10} if key.startswith("heal_") and key not in ("heal_steps", "heal_strategies") else {}
    name = _key_name(study, key)
    for make in (lambda: build(cls, {"budget": "smoke", **extra, key: value}) if key != "budget" else cls(budget=value),
                 lambda: load(study, cls, None, {**extra, key: value}, {})):
        with pytest.raises(InvalidValue) as e:
            make()
        message = str(e.value)
        assert name in message, message
        assert "\n" not in message
        if (study, key) in SUGGESTS:
            assert f"did you mean {SUGGESTS[study, key]}" in message, message


def _key_name(study: str, key: str) -> str:
    """How a refusal names a setting: a part's key by its nested table and its flag, others by key and flag."""
    cls = STUDIES[study]
    flag = "--" + getattr(cls, "FLAG_NAMES", {}).get(key, key).replace("_", "-")
    if key in cls.FLAT:
        part, field = cls.FLAT[key]
        return f"[{study}.{part}] {field} ({flag})"
    return f"{key} ({flag})"


@pytest.mark.parametrize("study,flags,match", [
    ("layers", {"heal_rank": "0"}, "[layers.heal] rank (--heal-rank) takes a whole number of at least 1, not 0"),
    ("layers", {"heal_rank": "x"}, "--heal-rank takes a whole number, not 'x'"),
    ("weights", {"tasks": "ppx"}, "[weights.eval] tasks (--tasks): unknown task 'ppx' (did you mean ppl?)"),
    ("weights", {"calibration": "one"}, "[weights.calib] order (--calibration) takes sequential or oneshot"),
    ("heads", {"lb_coef": "-1"}, "[heads.router] lb_coef (--lb-coef) takes a number of at least 0, not -1.0"),
    ("safety", {"C": "0"}, "[safety.probe] C (--probe-c) takes a number above 0, not 0.0"),
    ("safety", {"probe_layers": "x"}, "[safety.probe] layers (--probe-layers) takes all, stride:K"),
])
def test_part_flags_are_refused_by_their_flag_and_table(study, flags, match):
    with pytest.raises(InvalidValue) as e:
        _load_flags(study, flags)
    assert match in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_flat_names_in_the_study_table_and_flags_over_the_parts(tmp_path):
    """Older files (and the flags' vocabulary) keep working: ``heal_rank = 8`` in [layers] is [layers.heal] rank;
    a flag overrides a nested key; Python users compose the parts."""
    flat, nested = tmp_path / "flat.toml", tmp_path / "nested.toml"
    flat.write_text("[layers]\nbudget = 'smoke'\nheal_steps = 20\nheal_rank = 4\ntasks = ['ppl', 'facts']\n")
    nested.write_text("[layers]\nbudget = 'smoke'\n[layers.heal]\nsteps = 20\nrank = 4\n[layers.eval]\n"
                      "tasks = ['ppl', 'facts']\n")
    by_flat, by_nested = load("layers", LayersCfg, str(flat), {}, {})[1], load("layers", LayersCfg, str(nested), {}, {})[1]
    python = LayersCfg(budget="smoke", heal=HealPart(steps=20, rank=4), eval=EvalPart(tasks=("ppl", "facts")))
    assert by_flat == by_nested == python and python.heal_cfg().rank == 4
    assert _identity(by_flat) == _identity(python)
    over = load("layers", LayersCfg, str(nested), {"heal_rank": 2}, {})[1]
    assert over.heal.rank == 2 and over.heal.steps == 20
    with pytest.raises(InvalidValue, match=r"\[heads.eval\] mmlu_path is not a setting of the heads"):
        HeadsCfg(budget="smoke", eval=EvalPart(mmlu_path="x"))


@pytest.mark.parametrize("path", sorted(Path(__file__).parents[2].glob("examples/*.toml")), ids=lambda p: p.name)
def test_example_files_load(path, tmp_path, monkeypatch):
    """The README's seed-setup files are valid: every key known, the parts as nested tables."""
    import tomllib

    study = next(k for k in tomllib.loads(path.read_text()) if k != "model")
    for name in ("my_harmful.jsonl", "my_harmless.jsonl"):  # the safety example's own prompt files
        (tmp_path / name).write_text("".join(f'{{"text": "request number {i}"}}\n' for i in range(40)))
    monkeypatch.chdir(tmp_path)
    load(study, STUDIES[study], str(path), {}, {})
    assert any(f"[{study}.{part}]" in path.read_text() for part in parts_of(STUDIES[study]))
