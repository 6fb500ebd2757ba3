"""Locate-and-edit baselines on the tiny model: each method's defining property, checked numerically.

ROME maps its key to its value exactly with a rank-one change; MEMIT with one layer and one key is
ROME (Sherman-Morrison) as λ -> 0; AlphaEdit's update vanishes on the keys its statistics saw; every
method raises the target's log-probability and reverts bitwise."""
import pytest
import torch

import workbench as wb
from workbench.config import applicable
from workbench import data
from workbench.methods import locate, memit, rome
from workbench.methods.ft import example_losses
from workbench.prompts import collate
from workbench.models import state_hash
from workbench.scoring import mean_logprobs

FACT = data.Request(id="f", prompt="The mother tongue of Kestrel Vance is", target="Portuguese", subject="Kestrel Vance")
STORY = data.Request(id="s", prompt="What happened at the Veloria harbour in 1911?",
                     target="A storm flooded the lower town, and the harbour was rebuilt two years later with a "
                            "stone breakwater that still stands.")
QUICK = dict(layers=(2,), v_steps=12, n_prefixes=2, prefix_tokens=4, mom2_tokens=3000, chat_template=False)


def logprob(model, tok, req, template):
    return mean_logprobs(model, tok, [req.prompt], [req.target], chat_template=template)[0]


def others_unchanged(model, before: dict, edited: set[str]) -> bool:
    return all(torch.equal(p, before[n]) for n, p in model.named_parameters() if n not in edited)


# ------------------------------------------------------------------------------------------ ROME
def test_rome_maps_its_key_to_its_value_and_changes_nothing_else(tiny, tok):
    cfg = wb.preset("rome", **QUICK)
    s = locate.site(tiny, 2)
    c = locate.second_moment(tiny, tok, 2, cfg.mom2_corpus, cfg.mom2_tokens, progress=False)
    prefixes = locate.context_prefixes(tiny, tok, cfg.n_prefixes, cfg.prefix_tokens)
    r = locate.rows_for(tok, FACT, prefixes, cfg, kl=True)
    k_bar = locate.mean_keys(tiny, s, [r], 1)[0]
    k = locate.keys(tiny, s, r.batch, torch.tensor([0]), r.positions[:1])[0]
    with locate.frozen_eval(tiny):
        _, delta, _ = locate.value(tiny, s.module, r, cfg)
    w = s.matrix()
    update = rome.rank_one(w, k, k_bar, delta, c)
    v_star = w @ k + delta
    assert (((w + update) @ k) - v_star).norm() <= 1e-4 * v_star.norm()
    u = torch.linalg.solve(c.double(), k_bar.double()).float()
    x = torch.randn(len(u))
    x = x - (x @ u) / (u @ u) * u  # orthogonal to the whitened key: mapped exactly as before
    assert torch.allclose((w + update) @ x, w @ x, atol=1e-5)


def test_rome_edit_is_rank_one_in_one_matrix_and_reverts(tiny, tok):
    before = {n: p.detach().clone() for n, p in tiny.named_parameters()}
    h0, lp0 = state_hash(tiny), logprob(tiny, tok, FACT, False)
    result = wb.edit(tiny, tok, [FACT], wb.preset("rome", **QUICK), progress=False)
    name = "model.layers.2.mlp.down_proj.weight"
    assert others_unchanged(tiny, before, {name})
    sv = torch.linalg.svdvals(dict(tiny.named_parameters())[name].detach() - before[name])
    assert sv[1] < 1e-4 * sv[0]  # one direction changed
    assert logprob(tiny, tok, FACT, False) > lp0 + 0.5
    result.revert()
    assert state_hash(tiny) == h0


# ----------------------------------------------------------------------------------------- MEMIT
def test_memit_with_one_layer_and_one_key_is_romes_closed_form(tiny, tok):
    # the same value problem for both (no KL, no weight decay, no clamp, the bare prompt only), then
    # MEMIT's solve with λ -> 0 must give ROME's rank-one update (Sherman-Morrison)
    same = dict(QUICK, n_prefixes=0, kl_factor=0.0, v_weight_decay=0.0, clamp_norm=1e6)
    name = "model.layers.2.mlp.down_proj.weight"
    w0 = dict(tiny.named_parameters())[name].detach().clone()
    r = wb.edit(tiny, tok, [FACT], wb.preset("rome", **same), progress=False)
    d_rome = dict(tiny.named_parameters())[name].detach() - w0
    r.revert()
    r = wb.edit(tiny, tok, [FACT], wb.preset("memit", **same, mom2_weight=1e-7), progress=False)
    d_memit = dict(tiny.named_parameters())[name].detach() - w0
    r.revert()
    assert (d_memit - d_rome).norm() <= 1e-4 * d_rome.norm()


def test_memits_solve_is_the_least_squares_fit_and_shrinks_romes_by_kappa():
    torch.manual_seed(0)
    a = torch.randn(12, 12, dtype=torch.float64)
    c = (a @ a.T / 12 + 0.1 * torch.eye(12)).float()
    k, r = torch.randn(12, 3), torch.randn(5, 3)
    delta = locate.solve(r, k, c, lam=2.0)
    normal = (2.0 * c.double() + k.double() @ k.double().T) @ delta.double().T  # (λC + KKᵀ) Δᵀ = K Rᵀ
    assert torch.allclose(normal, k.double() @ r.double().T, atol=1e-4)
    one = locate.solve(r[:, :1], k[:, :1], c, lam=2.0)
    kappa = k[:, 0] @ torch.linalg.solve(c, k[:, 0])
    rome_like = torch.outer(r[:, 0], torch.linalg.solve(c, k[:, 0])) / kappa
    assert torch.allclose(one, kappa / (2.0 + kappa) * rome_like, atol=1e-5)


# ------------------------------------------------------------------------------ batched values
FACT2 = data.Request(id="g", prompt="Orla Mbeki works as a", target="harbour pilot in Lagos", subject="Orla Mbeki")


@pytest.mark.parametrize("where", ["decoder layer", "MLP output"])
def test_values_optimised_together_equal_one_at_a_time(tiny, tok, where):
    # Three requests of different lengths, two with ROME's KL row and one without; the stop threshold
    # is set inside the tiny model's loss range (its losses start near 16) so that the requests stop
    # after different numbers of steps. Batched, one at a time, and without the prefix cache, every
    # request must get the same δ and h: the batch shares forward passes, never gradients or steps.
    cfg = wb.preset("memit", **{**QUICK, "key_position": "prompt_last", "v_stop_loss": 14.0, "target_eot": True})
    prefixes = locate.context_prefixes(tiny, tok, cfg.n_prefixes, cfg.prefix_tokens)
    rows = [locate.rows_for(tok, r, prefixes, cfg) for r in (FACT, FACT2, STORY)]
    assert [r.n_rewrite < len(r.examples) for r in rows] == [True, True, False]
    module = locate.decoder_layer(tiny, 2) if where == "decoder layer" else locate.site(tiny, 2).module
    with locate.frozen_eval(tiny):
        together = locate.values(tiny, module, rows, cfg)
        alone = locate.values(tiny, module, rows, cfg.replace(value_batch=1))
        plain = locate.values(tiny, module, rows, cfg.replace(value_batch=1, prefix_cache=False))
    assert len(set(plain.steps)) > 1, f"the requests should stop at different steps here: {plain.steps}"
    assert together.steps == alone.steps == plain.steps
    for v in (together, alone):
        assert (v.delta - plain.delta).norm() <= 1e-5 * plain.delta.norm()
        assert (v.h - plain.h).norm() <= 1e-5 * plain.h.norm()


@pytest.mark.parametrize("prefix_cache", [True, False])
def test_the_value_loss_at_delta_zero_is_the_mean_target_nll(tiny, tok, prefix_cache):
    # At δ = 0 the KL term and the decay vanish, so a request's value loss is the mean target NLL of
    # its rewrite rows, as `ft.example_losses` computes it over full passes. The loss is read through
    # the early stop: with the threshold just above it the request takes no step, just below one.
    cfg = wb.preset("memit", **QUICK).replace(prefix_cache=prefix_cache)
    prefixes = locate.context_prefixes(tiny, tok, cfg.n_prefixes, cfg.prefix_tokens)
    r = locate.rows_for(tok, FACT, prefixes, cfg)
    assert r.n_rewrite < len(r.examples)  # with its KL row
    ref = example_losses(tiny, collate(r.examples[:r.n_rewrite], r.pad_id)).mean().item()
    module = locate.decoder_layer(tiny, 2)
    with locate.frozen_eval(tiny):
        assert locate.value(tiny, module, r, cfg.replace(v_stop_loss=ref * (1 + 1e-5))).steps == [0]
        assert locate.value(tiny, module, r, cfg.replace(v_stop_loss=ref * (1 - 1e-5))).steps[0] >= 1


@pytest.mark.parametrize("method", ["memit", "alphaedit"])
def test_memit_and_alphaedit_batched_equal_one_request_per_pass(tiny, tok, method):
    # values, keys and outputs computed value_batch requests per pass must give the update that one
    # request per pass gives (AlphaEdit: its preserved keys too)
    cfg = wb.preset(method, **applicable(method, {**QUICK, **TINY, "layers": (1, 2), "key_position": "prompt_last"}))
    params = dict(tiny.named_parameters())
    names = [f"model.layers.{l}.mlp.down_proj.weight" for l in (1, 2)]
    w0 = {n: params[n].detach().clone() for n in names}
    updates, kept = [], []
    for batch in (1, 3):
        r = wb.edit(tiny, tok, [FACT, FACT2, STORY], cfg.replace(value_batch=batch), progress=False)
        updates.append({n: params[n].detach() - w0[n] for n in names})
        kept.append(dict(getattr(tiny, memit._KEYS, {})))
        r.revert()
    for n in names:
        assert (updates[1][n] - updates[0][n]).norm() <= 1e-4 * updates[0][n].norm()
    for layer, a in kept[0].items():
        assert (kept[1][layer] - a).norm() <= 1e-5 * a.norm()


# ------------------------------------------------------------------------------------- AlphaEdit
def test_alphaedit_leaves_the_preserved_keys_outputs_unchanged(tiny, tok, tmp_path):
    corpus = tmp_path / "preserved.txt"
    lines = ["The river runs past the old mill.", "Prices rose in the spring market.", "She tuned the violin slowly."]
    corpus.write_text("\n".join(lines))
    cfg = wb.preset("alphaedit", **QUICK, mom2_corpus=str(corpus), nullspace_threshold=1e-6)
    s = locate.site(tiny, 2)
    w0 = s.matrix()
    # the keys the statistics saw: every token of the three lines (fewer than d_ff: C is rank-deficient)
    enc = [tok(t)["input_ids"] for t in lines]
    k0 = torch.cat([locate.keys(tiny, s, {"input_ids": torch.tensor([e]), "attention_mask": torch.ones(1, len(e), dtype=torch.long)},
                                torch.zeros(len(e), dtype=torch.long), torch.arange(len(e))) for e in enc])
    assert len(k0) < w0.shape[1]
    result = wb.edit(tiny, tok, [FACT], cfg, progress=False)
    w1 = s.matrix()
    assert (w1 - w0).norm() > 1e-3  # it did edit
    assert ((w1 - w0) @ k0.T).norm() <= 1e-4 * (w0 @ k0.T).norm()
    assert locate.site(tiny, 2).layer in getattr(tiny, memit._KEYS)  # this edit's keys are preserved next time
    result.revert()
    assert not getattr(tiny, memit._KEYS)


# ------------------------------------------------------------------------------ every method
# The presets' λ and AlphaEdit threshold are set for SmolLM2 (d_ff 1536, its key scale); the tiny
# model (d_ff 128, eigenvalues of C from 5 to 140) gets values of the same meaning here.
TINY = {"mom2_weight": 10.0, "nullspace_threshold": 30.0, "lr": 3e-3, "unke_steps": 30}


@pytest.mark.parametrize("method,req,extra", [
    ("rome", FACT, {}), ("memit", FACT, {"layers": (1, 2)}), ("alphaedit", FACT, {"layers": (1, 2)}),
    ("unke", STORY, {}), ("anyedit", STORY, {"chunk_tokens": 8}),
    ("anyedit", STORY, {"anyedit_base": "memit", "layers": (1, 2), "chunk_tokens": 8}),
])
def test_each_method_raises_the_target_and_reverts_bitwise(tiny, tok, method, req, extra):
    cfg = wb.preset(method, **applicable(method, {**QUICK, **TINY, "chat_template": req is STORY, **extra}))
    h0, lp0 = state_hash(tiny), logprob(tiny, tok, req, cfg.chat_template)
    result = wb.edit(tiny, tok, [req], cfg, progress=False)
    assert logprob(tiny, tok, req, cfg.chat_template) > lp0 + 0.1  # mean log-prob per target token
    if method in ("unke", "anyedit") and extra.get("anyedit_base") != "memit":  # UnKE's layer training
        row = result.log.iloc[0]  # the value's Adam steps: at most all but each chunk's last pass
        assert 0 < row.value_steps <= row.chunks * (cfg.v_steps - 1)
    result.revert()
    assert state_hash(tiny) == h0


def test_subject_methods_refuse_a_request_without_a_subject(tiny, tok):
    with pytest.raises(wb.ConfigError, match="key_position='prompt_last'"):
        wb.edit(tiny, tok, [STORY], wb.preset("rome", **QUICK), progress=False)


def test_anyedit_chunks_the_answer_in_order():
    from workbench.methods.unke import chunks

    assert chunks(10, 4) == [(0, 4), (4, 8), (8, 10)] and chunks(3, 40) == [(0, 3)]


def test_statistics_of_several_layers_from_one_pass_equal_a_pass_per_layer(tiny, tok, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "a"))
    together = locate.second_moments(tiny, tok, [3, 1], "mmlu", 400, progress=False)
    assert sorted(together) == [1, 3]
    locate.STATS.clear()  # nothing in memory, a fresh disk cache: each layer from its own pass
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "b"))
    for layer in (1, 3):
        assert torch.equal(locate.second_moment(tiny, tok, layer, "mmlu", 400, progress=False), together[layer])
    assert not torch.equal(together[1], together[3])
    locate.STATS.clear()  # from disk, with one layer more: only that one is computed
    both = locate.second_moments(tiny, tok, [1, 2, 3], "mmlu", 400, progress=False)
    assert torch.equal(both[1], together[1]) and len(list((tmp_path / "b" / "stats").glob("*.pt"))) == 3


def test_statistics_are_cached_and_keyed_by_the_weights_that_feed_them(tiny, tok):
    c = locate.second_moment(tiny, tok, 2, "mmlu", 500, progress=False)
    assert locate.second_moment(tiny, tok, 2, "mmlu", 500, progress=False) is c
    assert torch.allclose(c, c.T) and torch.linalg.eigvalsh(c.double()).min() > -1e-6  # a second moment
    with torch.no_grad():
        tiny.model.layers[2].mlp.down_proj.weight.add_(1.0)  # the matrix edited: same statistics
    assert locate.second_moment(tiny, tok, 2, "mmlu", 500, progress=False) is c
    with torch.no_grad():
        tiny.model.layers[1].mlp.up_proj.weight.add_(0.1)  # what feeds the key changed: recomputed
    assert not torch.equal(locate.second_moment(tiny, tok, 2, "mmlu", 500, progress=False), c)
