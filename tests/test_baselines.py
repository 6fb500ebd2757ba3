"""The locate-and-edit baselines as their authors run them (issue 42): what each preset trains, where its
value loop stops, how MEMIT averages its keys, what UnKE preserves and decays. The slow test pins ROME
on the embedded SmolLM2 to figures of the official kmeng01/rome code run with the same statistics,
prefixes and settings."""
import math

import pytest
import torch

import workbench as wb
from workbench import data
from workbench.methods import locate, unke
from workbench.models import spec
from workbench.prompts import IGNORE, prompt_ids
from workbench.scoring import mean_logprobs

FACT = data.Request(id="f", prompt="The mother tongue of Kestrel Vance is", target="Portuguese", subject="Kestrel Vance")
STORY = data.Request(id="s", prompt="What happened at the Veloria harbour in 1911?",
                     target="A storm flooded the lower town, and the harbour was rebuilt two years later.")
SMALL = dict(layers=(2,))
PREFIXES = dict(n_prefixes=2, prefix_tokens=4)  # ROME's, MEMIT's and AlphaEdit's keys (UnKE's and AnyEdit's have none)


def trained(e) -> list[int]:
    """The labelled tokens of an encoded row."""
    return [t for t in e.labels if t != IGNORE]


@pytest.mark.parametrize("method", ["rome", "memit", "alphaedit", "unke", "anyedit"])
def test_each_preset_trains_the_target_its_authors_train(tiny, tok, method):
    # ROME's, MEMIT's and AlphaEdit's code trains " " + target alone; UnKE's and AnyEdit's data append the
    # end-of-turn to the answer. `target_eot` adds it to the first three, and only when asked.
    cfg = wb.preset(method, **SMALL, **(PREFIXES if method in ("rome", "memit", "alphaedit") else {}))
    s = spec(tok)
    if method in ("rome", "memit", "alphaedit"):
        answer = tok(" " + FACT.target, add_special_tokens=False)["input_ids"]
        rows = locate.rows_for(tok, FACT, locate.context_prefixes(tiny, tok, 2, 4), cfg)
        assert not cfg.target_eot and not cfg.chat_template
        for e in rows.examples[:rows.n_rewrite]:  # the bare prompt and each prefixed one
            assert trained(e) == answer and e.input_ids[-len(answer):] == answer
        asked = locate.rows_for(tok, FACT, locate.context_prefixes(tiny, tok, 2, 4), cfg.replace(target_eot=True))
        assert trained(asked.examples[0]) == answer + [s.eos_id]
    else:
        answer = tok(STORY.target, add_special_tokens=False)["input_ids"]
        seq = unke.sequence(tok, STORY, cfg)
        assert cfg.target_eot and cfg.chat_template
        assert trained(seq) == answer + [s.eot_id]
        assert seq.input_ids[:seq.n_prompt] == prompt_ids(tok, STORY.prompt, True)
        assert trained(unke.sequence(tok, STORY, cfg.replace(target_eot=False))) == answer


def test_the_presets_stop_their_value_loops_where_the_official_code_does(tiny, tok):
    # kmeng01/rome compute_v, kmeng01/memit compute_z, AlphaEdit compute_z: loss < 5e-2; UnKE: the check is
    # commented out; AnyEdit's unke_ARE: loss < 5e-3 (its MEMIT base 1e-2)
    assert {m: wb.preset(m).v_stop_loss for m in ("rome", "memit", "alphaedit", "unke", "anyedit")} == \
        {"rome": 5e-2, "memit": 5e-2, "alphaedit": 5e-2, "unke": 0.0, "anyedit": 5e-3}
    # no threshold: every step runs even where the loss is already tiny (a generous threshold stops at once)
    cfg = wb.preset("unke", **SMALL, v_steps=6, chat_template=False)
    rows = locate.Rows([unke.sequence(tok, FACT, cfg)], [unke.sequence(tok, FACT, cfg).n_prompt - 1], 1,
                       spec(tok).pad_id)
    module = locate.decoder_layer(tiny, 2)
    with locate.frozen_eval(tiny):
        assert locate.value(tiny, module, rows, cfg).steps == [cfg.v_steps - 1]
        assert locate.value(tiny, module, rows, cfg.replace(v_stop_loss=1e6)).steps == [0]


def test_memits_key_is_the_mean_of_the_bare_key_and_the_prefixes_mean(tiny, tok):
    cfg = wb.preset("memit", **SMALL, **{**PREFIXES, "n_prefixes": 3})
    assert cfg.key_mean == "two_group" and wb.preset("alphaedit").key_mean == "two_group"
    assert wb.preset("rome").key_mean == "flat"  # ROME's compute_u: one mean over every context
    s = locate.site(tiny, 2)
    prefixes = locate.context_prefixes(tiny, tok, cfg.n_prefixes, cfg.prefix_tokens)
    groups = [locate.rows_for(tok, r, prefixes, cfg) for r in (FACT, data.Request(
        id="g", prompt="Orla Mbeki works as a", target="pilot", subject="Orla Mbeki"))]
    for g, r in enumerate(groups):
        every = locate.keys(tiny, s, r.batch, torch.arange(r.n_rewrite), r.positions[:r.n_rewrite])  # [1 + n, d_in]
        two = locate.mean_keys(tiny, s, groups, 2, two_group=True)[g]
        flat = locate.mean_keys(tiny, s, groups, 2)[g]
        assert torch.allclose(two, (every[0] + every[1:].mean(0)) / 2, rtol=1e-4, atol=1e-4)
        assert torch.allclose(flat, every.mean(0), rtol=1e-4, atol=1e-4)
        assert (two - flat).norm() > 1e-3 * flat.norm()  # the two definitions differ here
    alone = locate.mean_keys(tiny, s, [locate.rows_for(tok, FACT, [""], cfg)], 1, two_group=True)[0]
    bare = locate.keys(tiny, s, groups[0].batch, torch.tensor([0]), groups[0].positions[:1])[0]
    assert torch.allclose(alone, bare, rtol=1e-4, atol=1e-4)  # no prefixes: one group, the bare key


def test_unke_preserves_chat_samples_drawn_for_each_edit(tok):
    cfg = wb.preset("unke")
    assert cfg.preserve_set == "chat_per_edit" and cfg.n_preserve == 20
    a, b = unke.preserved(tok, cfg, FACT), unke.preserved(tok, cfg, STORY)
    assert len(a) == len(b) == 20
    assert [e.input_ids for e in a] == [e.input_ids for e in unke.preserved(tok, cfg, FACT)]  # seeded per request
    assert [e.input_ids for e in a] != [e.input_ids for e in b]  # drawn afresh for another edit
    head = prompt_ids(tok, "x", True)
    start = head[:head.index(tok.convert_tokens_to_ids("x"))] if tok.convert_tokens_to_ids("x") in head else head[:3]
    for e in a:  # a user turn, the generation prompt, then the reply without an end-of-turn (UnKE's format)
        assert e.input_ids[:len(start)] == start
        assert spec(tok).eot_id in e.input_ids and e.input_ids[-1] != spec(tok).eot_id
    fixed = unke.preserved(tok, cfg.replace(preserve_set="mmlu_fixed"))
    assert all(spec(tok).eot_id not in e.input_ids for e in fixed)  # the earlier plain questions


@pytest.mark.parametrize("decay_norms", [False, True])
def test_unke_exempts_the_layer_norms_from_weight_decay(tiny, tok, monkeypatch, decay_norms):
    seen = []
    original = unke.make_optimizer

    def record(cfg, params):
        seen.append(params)
        return original(cfg, params)

    monkeypatch.setattr(unke, "make_optimizer", record)
    cfg = wb.preset("unke", **SMALL, v_steps=2, unke_steps=1, n_preserve=2, decay_norms=decay_norms)
    result = wb.edit(tiny, tok, [STORY], cfg, progress=False)
    result.revert()
    block = locate.decoder_layer(tiny, 2)
    norms = {id(block.input_layernorm.weight), id(block.post_attention_layernorm.weight)}
    groups = seen[0] if isinstance(seen[0][0], dict) else [{"params": seen[0]}]
    decay = {id(p): g.get("weight_decay", cfg.weight_decay) for g in groups for p in g["params"]}
    assert len(decay) == len(list(block.parameters())) and cfg.weight_decay == 0.01
    assert {decay[i] for i in norms} == ({0.01} if decay_norms else {0.0})
    assert {w for i, w in decay.items() if i not in norms} == {0.01}


@pytest.mark.slow
def test_rome_on_smollm2_equals_the_official_code():
    """The official kmeng01/rome (rome_main.py, compute_u.py, compute_v.py) run on the embedded SmolLM2 with
    the `rome` preset's settings, our context prefixes (bare prompt first) and our statistics C (inverted in
    float32, as its get_inv_cov does), each request edited alone on the unedited model, gave: ‖δ‖ 94.599 and
    83.772, ‖ΔW‖ 20.940 and 16.323, after 16 and 19 Adam steps (its early stop), and the edited model's
    P(target | bare prompt) 0.9773 and 0.9311 (issue 42). Before the target lost its end-of-turn ours gave
    ‖δ‖ 122.115 / 104.774, ‖ΔW‖ 27.030 / 20.415 after 24 / 24 steps."""
    official = {"1884": (94.599, 20.940, 16, 0.9773), "19399": (83.772, 16.323, 19, 0.9311)}
    model, tok = wb.load(device="cpu", dtype="float32")
    cfg = wb.preset("rome")
    requests = wb.data.load("counterfact", n=2)
    assert [r.id for r in requests] == ["1884", "19399"] and requests[0].prompt == "Reedy Glacier is in"
    for req in requests:
        result = wb.edit(model, tok, [req], cfg, progress=False)
        row = result.log.iloc[0]
        p_target = math.exp(mean_logprobs(model, tok, [req.prompt], [req.target], chat_template=False)[0])
        result.revert()
        delta, update, steps, prob = official[req.id]
        assert int(row.steps) == steps, (req.id, row.steps)
        assert row.delta_norm == pytest.approx(delta, rel=1e-3), req.id
        assert row.update_norm == pytest.approx(update, rel=1e-3), req.id
        assert p_target == pytest.approx(prob, rel=1e-3), req.id  # the edited model, the bare prompt
    # C⁻¹ k̄ solved in float64 (ours, `rome.rank_one`) or inverted in float32 (ROME's get_inv_cov): the same
    # direction to 1e-4 on this C (the updates above agree to 1e-6)
    c = locate.second_moment(model, tok, cfg.layers[0], cfg.mom2_corpus, cfg.mom2_tokens, progress=False)
    k = torch.randn(c.shape[0], generator=torch.Generator().manual_seed(0))
    u64 = torch.linalg.solve(c.double(), k.double())
    u32 = torch.inverse(c.float()) @ k
    assert (u32.double() / u32.norm() - u64 / u64.norm()).norm() < 1e-4
