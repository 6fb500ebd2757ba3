"""`edit_each`: K single edits trained at once give the per-edit results of K separate `wb.edit` calls
(weights to 1e-5, same step counts), leave the model unchanged until applied, and revert bitwise."""
import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config

import workbench as wb
from workbench.errors import ConfigError, WorkbenchError

CFG = wb.EditConfig(model_name="tiny-random-llama", device="cpu", layers=(2,), lr=1e-2, schedule="depth_first",
                    steps_per_edit=12, early_stop_loss=0.5)


def separately(model, tok, requests, cfg):
    """What each request's own wb.edit trains: name -> weight, and its log of losses."""
    out = []
    for r in requests:
        res = wb.edit(model, tok, [r], cfg, progress=False)
        out.append(({n: p.detach().clone() for n, p in model.named_parameters() if n in res.originals}, res.log))
        res.revert()
    return out


def check_equal(model, tok, requests, cfg):
    before = wb.models.state_hash(model)
    expected = separately(model, tok, requests, cfg)
    results = wb.edit_each(model, tok, requests, cfg, progress=False)
    assert wb.models.state_hash(model) == before  # nothing is in the model until apply()
    assert len(results) == len(requests)
    for res, (weights, log) in zip(results, expected):
        assert res.reverted and res.steps == int((~log.skipped).sum())
        # every step's loss to 1e-5 (relative; losses are ~6 at the start): the same optimisation, step by step
        torch.testing.assert_close(torch.tensor(res.log.loss.values), torch.tensor(log.loss.values), atol=1e-5, rtol=1e-5)
        res.apply()
        params = dict(model.named_parameters())
        for n, w in weights.items():
            moved, want = params[n].detach() - res.originals[n], w - res.originals[n]
            if cfg.optimizer == "sgd":
                torch.testing.assert_close(moved, want, atol=1e-5, rtol=0)
            else:
                # Adam divides by sqrt(v): an entry whose gradient is ~0 turns the float rounding of the
                # batched products into an update of up to lr. The update as a whole agrees to 1e-4.
                assert (moved - want).norm() <= 1e-4 * want.norm(), n
        res.revert()
        assert wb.models.state_hash(model) == before
    return results


def test_edit_each_equals_separate_edits_depth_first(tiny, tok, facts):
    cfg = CFG.replace(lr=5e-2, early_stop_loss=1.0)
    results = check_equal(tiny, tok, facts[:4], cfg)
    steps = [r.steps for r in results]
    assert len(set(steps)) > 1 and min(steps) < cfg.steps_per_edit  # each edit stops at its own step


def test_edit_each_with_sgd_gives_the_same_weights_to_1e5(tiny, tok, facts):
    check_equal(tiny, tok, facts[:4], CFG.replace(optimizer="sgd", lr=0.1, early_stop_loss=0.0))


def test_edit_each_equals_separate_edits_breadth_first_with_clipping_and_two_matrices(tiny, tok, facts):
    cfg = CFG.replace(schedule="breadth_first", epochs=6, early_stop_loss=0.0, max_grad_norm=0.5,
                      components=("up", "down"), layers=(1, 2), optimizer="adamw", weight_decay=0.01)
    check_equal(tiny, tok, facts[:3], cfg)


def test_edit_each_on_gpt2_conv1d_with_a_fused_slice(tok):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(GPT2Config(vocab_size=tok.vocab_size + 10, n_embd=32, n_layer=3, n_head=4,
                                                        n_positions=128)).eval()
    reqs = [wb.Request(f"r{i}", f"Question {i}: who?", f" Answer {i}") for i in range(3)]
    cfg = CFG.replace(components=("v", "down"), layers=(1,), chat_template=False, early_stop_loss=0.0, steps_per_edit=5)
    results = check_equal(model, tok, reqs, cfg)
    d = results[0].deltas()["transformer.h.1.attn.c_attn.weight"]
    third = d.shape[1] // 3
    assert d[:, :2 * third].abs().max() == 0 and d[:, 2 * third:].abs().max() > 0  # only v's slice moved


def test_a_pending_edit_is_applied_once_and_only_on_the_original_weights(tiny, tok, facts):
    a, b = wb.edit_each(tiny, tok, facts[:2], CFG, progress=False)
    a.apply()
    with pytest.raises(WorkbenchError, match="already applied"):
        a.apply()
    with pytest.raises(WorkbenchError, match="not at its original value"):
        b.apply()
    a.revert()
    b.apply().revert()
    assert a.deltas().keys() == b.deltas().keys()


def test_edit_each_refuses_what_it_cannot_batch(tiny, tok, facts):
    with pytest.raises(ConfigError, match="method 'ft'"):
        wb.edit_each(tiny, tok, facts[:2], CFG.replace(method="lora"))
    with pytest.raises(ConfigError, match="trains Linear weights"):
        wb.edit_each(tiny, tok, facts[:2], CFG.replace(components=("block",)))


def test_single_protocol_runs_give_the_same_scores_with_parallel_edits(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_RESULTS", str(tmp_path))
    spec = wb.runs.RunSpec(edit=CFG, benchmark="facts-fixture", n_edits=4, protocol="single", splits=("ori", "para"))
    one = wb.runs.execute(spec, "one")
    spec4 = spec.replace(parallel_edits=4)
    assert spec4.hash() == spec.hash()  # a speed setting: the same run
    monkeypatch.setenv("WORKBENCH_RESULTS", str(tmp_path / "other"))  # so it runs again rather than being shared
    many = wb.runs.execute(spec4, "many")
    assert many["s_per_edit"] > 0 and many["steps"] == one["steps"]
    for k, v in one.items():
        if k.startswith(("ori.", "para.")):
            assert many[k] == pytest.approx(v, abs=1e-6), k


def test_runs_fall_back_to_one_edit_each_when_edit_each_cannot_batch(tiny, tok):
    from workbench.methods.parallel import batchable

    assert batchable(tiny, CFG) and batchable(tiny, CFG.replace(components=("mlp",)))  # its three matrices
    assert not batchable(tiny, CFG.replace(components=("block",)))  # the norms are not matrices
    assert not batchable(tiny, CFG.replace(method="lora"))


def test_score_each_gives_the_scores_of_applying_each_edit_in_turn(tiny, tok, facts):
    ecfg = wb.EvalConfig(splits=("ori", "para", "loc"), max_new_tokens=6, batch_size=5)
    requests = facts[:4]
    pre = wb.pre_edit(tiny, tok, requests, ecfg, cache=False)
    results = wb.edit_each(tiny, tok, requests, CFG, progress=False)
    before = wb.models.state_hash(tiny)
    together = wb.score_each(tiny, tok, requests, results, ecfg, pre).per_probe
    assert wb.models.state_hash(tiny) == before and all(r.reverted for r in results)  # still pending
    rounds = []
    for r, res in zip(requests, results):
        res.apply()
        rounds.append(wb.evaluate(tiny, tok, [r], ecfg, pre=pre).per_probe)
        res.revert()
    alone = pd.concat(rounds, ignore_index=True)
    assert list(together.generation) == list(alone.generation)
    assert together.generation.nunique() > 1  # the edits do differ: a routing mistake would show
    for column in ("sentence_cosine", "rougeL_recall", "token_acc"):
        np.testing.assert_allclose(together[column], alone[column], atol=1e-5)
    with pytest.raises(WorkbenchError, match="pending"):
        wb.score_each(tiny, tok, requests[:1], [results[0].apply()], ecfg, pre)
    results[0].revert()
