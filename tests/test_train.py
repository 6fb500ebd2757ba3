"""The edit core on the tiny random Llama: schedules, accumulation, learning, revert, faults."""
import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, Qwen2Config

import workbench as wb
from workbench import data, prompts
from workbench.errors import EditError
from workbench.scoring import token_accuracy
from workbench.methods.ft import example_losses

from workbench.models import state_hash

FAST = dict(components=("down",), layers=(1, 2), lr=1e-2, early_stop_loss=0.0)


def ids_of(log):
    return [tuple(r) for r in log["requests"]]


def test_depth_first_visits_edits_in_order_to_convergence(tiny, tok, facts):
    cfg = wb.EditConfig(**{**FAST, "early_stop_loss": 0.05}, schedule="depth_first", steps_per_edit=200)
    r = wb.edit(tiny, tok, facts[:3], cfg, progress=False)
    edits = r.log.groupby("edit", sort=True)
    assert list(edits.groups) == [0, 1, 2]
    for k, (_, rows) in enumerate(edits):
        assert set(ids_of(rows)) == {(facts[k].id,)}  # only its own edit
        assert rows["loss"].iloc[-1] < 0.05 and rows["skipped"].iloc[-1]  # converged, then stopped
        assert rows["step"].is_monotonic_increasing
    assert r.log["edit"].is_monotonic_increasing  # edit k+1 starts after edit k is done


def test_breadth_first_epochs_are_reshuffled_passes(tiny, tok, facts):
    cfg = wb.EditConfig(**FAST, schedule="breadth_first", epochs=3, batch_size=3)
    r = wb.edit(tiny, tok, facts, cfg, progress=False)
    orders = []
    for _, rows in r.log.groupby("epoch"):
        seen = [i for batch in ids_of(rows) for i in batch]
        assert sorted(seen) == sorted(f.id for f in facts)  # each edit exactly once per epoch
        assert [len(b) for b in ids_of(rows)] == [3, 3, 3, 1]
        orders.append(seen)
    assert len(orders) == 3 and len({tuple(o) for o in orders}) > 1  # reshuffled
    again = wb.edit(wb.load("tiny-random-llama", device="cpu")[0], tok, facts, cfg, progress=False)
    assert ids_of(again.log) == ids_of(r.log)  # the order is a function of the seed
    plain = wb.edit(tiny, tok, facts, cfg.replace(shuffle=False, epochs=1), progress=False)
    assert [i for b in ids_of(plain.log) for i in b] == [f.id for f in facts]


@pytest.mark.parametrize("schedule", ["breadth_first", "depth_first"])
def test_batch_size_sets_the_number_of_optimiser_steps(tiny, tok, schedule):
    reqs = [data.Request(id=str(i), prompt=f"Question number {i}?", target=f"Answer {i}") for i in range(16)]
    cfg = wb.EditConfig(**FAST, schedule=schedule, epochs=2, steps_per_edit=2)
    one = wb.edit(tiny, tok, reqs, cfg.replace(batch_size=1), progress=False)
    one.revert()
    eight = wb.edit(tiny, tok, reqs, cfg.replace(batch_size=8), progress=False)
    assert (one.steps, eight.steps) == (32, 4)  # 16 batches x 2 vs 2 batches x 2
    assert set(eight.log["requests"].map(len)) == {8}


def test_micro_batches_accumulate_to_the_same_update(tok, facts):
    results = []
    w_init = wb.load("tiny-random-llama", device="cpu")[0].model.layers[1].mlp.down_proj.weight.detach()
    for micro in (0, 2, 1):
        model, _ = wb.load("tiny-random-llama", device="cpu")
        # SGD: its update is linear in the gradient (Adam would magnify float-order noise in ~0 gradients)
        cfg = wb.EditConfig(**{**FAST, "lr": 1.0}, batch_size=4, micro_batch_size=micro, epochs=2, shuffle=False,
                            optimizer="sgd")
        r = wb.edit(model, tok, facts[:8], cfg, progress=False)
        results.append((r.log["loss"].tolist(), model.model.layers[1].mlp.down_proj.weight.detach().clone()))
    (l0, w0), *rest = results
    update = (w0 - w_init).abs().max()
    assert update > 0.1
    for losses, w in rest:
        assert losses == pytest.approx(l0, rel=1e-5)
        assert (w - w0).abs().max() < 1e-4 * update  # equal up to float32 summation order


def test_three_facts_reach_high_token_accuracy(tiny, tok, facts):
    three = facts[:3]
    prompts, targets = [f.prompt for f in three], [f.target for f in three]
    before = token_accuracy(tiny, tok, prompts, targets)
    cfg = wb.EditConfig(components=("down",), layers=(1, 2), lr=1e-2, batch_size=3, epochs=100)
    r = wb.edit(tiny, tok, three, cfg, progress=False)
    after = token_accuracy(tiny, tok, prompts, targets)
    assert max(before) < 0.5 and min(after) > 0.9
    assert r.n_trainable == 2 * 64 * 128 and r.timings["s_per_edit"] > 0


def test_only_selected_weights_change_and_lower_layers_keep_no_graph(tiny, tok, facts):
    before = {n: p.detach().clone() for n, p in tiny.named_parameters()}
    seen = {}

    def look(module, args, output):
        seen.setdefault("grad", output[0].requires_grad)

    hook = tiny.model.layers[1].register_forward_hook(look)
    cfg = wb.EditConfig(**{**FAST, "layers": (2,)}, epochs=2)
    wb.edit(tiny, tok, facts[:2], cfg, progress=False)
    hook.remove()
    changed = {n for n, p in tiny.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {"model.layers.2.mlp.down_proj.weight"}
    assert seen["grad"] is False  # activations below the edited layer are not part of the graph
    assert all(p.requires_grad for p in tiny.parameters())  # as a fresh model had them


@pytest.mark.parametrize("method,components,merge", [
    ("ft", ("down",), False), ("ft", ("q", "mlp"), False),
    ("lora", ("q", "v"), False), ("lora", ("q", "v"), True), ("adalora", ("q", "k", "v", "o"), False),
])
def test_edit_then_revert_is_bitwise(tiny, tok, facts, method, components, merge):
    h0 = state_hash(tiny)
    keys0 = set(tiny.state_dict())
    cfg = wb.EditConfig(method=method, components=components, layers="all" if method != "ft" else (1,),
                        lr=1e-2, epochs=3, batch_size=2, **({"merge_adapter": merge} if method != "ft" else {}))
    r = wb.edit(tiny, tok, facts[:4], cfg, progress=False)
    assert r.steps > 0
    assert r.log["loss"].iloc[-1] < r.log["loss"].iloc[0]  # the adapter / weights really trained
    assert state_hash(tiny) != h0
    r.revert()
    assert set(tiny.state_dict()) == keys0 and state_hash(tiny) == h0


def test_save_and_apply_delta(tiny, tok, facts, tmp_path):
    h0 = state_hash(tiny)
    r = wb.edit(tiny, tok, facts[:2], wb.EditConfig(**FAST, epochs=3), progress=False)
    edited = {n: p.detach().clone() for n, p in tiny.named_parameters()}
    path = r.save(tmp_path / "delta.safetensors")
    r.revert()
    assert state_hash(tiny) == h0
    applied = wb.apply_delta(tiny, path)
    for n, p in tiny.named_parameters():
        assert torch.allclose(p, edited[n], atol=1e-6), n
    assert applied.cfg == r.cfg and applied.request_ids == [f.id for f in facts[:2]]
    applied.revert()
    assert state_hash(tiny) == h0


def test_nan_loss_reverts_and_names_the_step(tiny, tok, facts, monkeypatch):
    h0 = state_hash(tiny)
    calls = {"n": 0}
    real = example_losses

    def poisoned(model, batch):
        calls["n"] += 1
        out = real(model, batch)
        return out * float("nan") if calls["n"] == 3 else out

    monkeypatch.setattr("workbench.methods.ft.example_losses", poisoned)
    with pytest.raises(EditError, match=r"loss became nan at step 2 \(epoch 1\) on requests \['0'\].*restored"):
        wb.edit(tiny, tok, facts[:2], wb.EditConfig(**FAST, epochs=5, shuffle=False, batch_size=1), progress=False)
    assert state_hash(tiny) == h0


@pytest.mark.parametrize("exc", [KeyboardInterrupt, RuntimeError])
def test_interrupt_mid_edit_leaves_model_as_it_was(tiny, tok, facts, exc):
    h0 = state_hash(tiny)
    flags = [p.requires_grad for p in tiny.parameters()]
    calls = {"n": 0}

    def bomb(module, args):
        calls["n"] += 1
        if calls["n"] == 5:  # after a few optimiser steps have changed the weights
            raise exc("stop")

    handle = tiny.model.layers[0].register_forward_pre_hook(bomb)
    with pytest.raises(exc):
        wb.edit(tiny, tok, facts[:2], wb.EditConfig(**FAST, epochs=5), progress=False)
    handle.remove()
    assert calls["n"] == 5 and state_hash(tiny) == h0
    assert [p.requires_grad for p in tiny.parameters()] == flags and not tiny.training


def test_norm_constraint_bounds_every_weight(tiny, tok, facts):
    w0 = tiny.model.layers[1].mlp.down_proj.weight.detach().clone()
    wb.edit(tiny, tok, facts[:2], wb.EditConfig(**{**FAST, "layers": (1,)}, epochs=5, norm_constraint=1e-3), progress=False)
    diff = (tiny.model.layers[1].mlp.down_proj.weight - w0).abs().max().item()
    assert 0 < diff <= 1e-3 + 1e-7


def test_gpt2_fused_q_slice_leaves_k_and_v_untouched(tok, facts):
    model = AutoModelForCausalLM.from_config(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4, n_positions=128))
    model.config.bos_token_id = model.config.eos_token_id = None  # GPT-2's ids lie outside this vocabulary
    w0 = model.transformer.h[1].attn.c_attn.weight.detach().clone()
    r = wb.edit(model, tok, facts[:2], wb.EditConfig(components=("q",), layers=(1,), lr=1e-2, epochs=3), progress=False)
    w = model.transformer.h[1].attn.c_attn.weight.detach()
    assert not torch.equal(w[:, :32], w0[:, :32]) and torch.equal(w[:, 32:], w0[:, 32:])
    assert r.n_trainable == 32 * 32 + 32  # the q columns of the weight and of the bias
    r.revert()
    assert torch.equal(model.transformer.h[1].attn.c_attn.weight, w0)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
def test_left_padding_does_not_change_an_examples_loss(tok, family):
    cfgs = {"qwen2": Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2),
            "gpt2": GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4, n_positions=128)}
    torch.manual_seed(0)
    model = wb.load("tiny-random-llama", device="cpu")[0] if family == "llama" else AutoModelForCausalLM.from_config(cfgs[family]).eval()
    short = prompts.encode(tok, "Hi?", "Yes", "target", True)
    long = prompts.encode(tok, "A much longer question with many more tokens in it?", "No way", "target", True)
    alone = example_losses(model, prompts.collate([short], 2))
    padded = example_losses(model, prompts.collate([short, long], 2))
    assert torch.allclose(alone[0], padded[0], atol=1e-5)


def test_a_lora_edit_does_not_depend_on_what_the_process_drew_before(tiny, tok, facts):
    """The adapter's random init comes from cfg.seed: drawing from torch's generator in between (as
    loading a scorer does) changes nothing."""
    cfg = wb.EditConfig(model_name="tiny-random-llama", method="lora", layers=(2,), lr=1e-2, epochs=2,
                        lora_dropout=0.0)
    first = wb.edit(tiny, tok, facts[:2], cfg, progress=False)
    a = first.deltas()
    first.revert()
    torch.rand(1000)
    second = wb.edit(tiny, tok, facts[:2], cfg, progress=False)
    b = second.deltas()
    second.revert()
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


def test_a_breadth_first_edit_killed_mid_way_resumes_from_its_last_epoch(tiny, tok, facts, tmp_path):
    # an unbroken edit, then the same edit killed in its third epoch and called again with the same
    # checkpoint file: the second call starts after epoch two and ends on bitwise the same weights,
    # with the unbroken edit's log (every step's batch and loss)
    cfg = wb.EditConfig(**{**FAST, "early_stop_loss": 1e-9}, epochs=6, batch_size=2)
    names = ["model.layers.1.mlp.down_proj.weight", "model.layers.2.mlp.down_proj.weight"]
    params = dict(tiny.named_parameters())
    whole = wb.edit(tiny, tok, facts[:4], cfg, progress=False)
    expected = {n: params[n].detach().clone() for n in names}
    whole.revert()
    path = tmp_path / "edit.ckpt"
    calls = {"n": 0}

    def kill(module, args):
        calls["n"] += 1
        if calls["n"] == 6:  # the second step of the third epoch (two steps per epoch)
            raise KeyboardInterrupt

    handle = tiny.model.layers[2].register_forward_pre_hook(kill)
    with pytest.raises(KeyboardInterrupt):
        wb.edit(tiny, tok, facts[:4], cfg, progress=False, checkpoint=path)
    handle.remove()
    assert path.exists() and torch.load(path, weights_only=False)["epoch"] == 2
    resumed = wb.edit(tiny, tok, facts[:4], cfg, progress=False, checkpoint=path)
    assert all(torch.equal(params[n], expected[n]) for n in names)
    assert resumed.log[["step", "epoch", "loss"]].equals(whole.log[["step", "epoch", "loss"]])
    assert ids_of(resumed.log) == ids_of(whole.log) and resumed.timings["resumed_s"] > 0
    assert not path.exists()  # finished: the file is gone
    resumed.revert()
    with pytest.raises(wb.ConfigError, match="method='ft' with schedule='breadth_first'"):
        wb.edit(tiny, tok, facts[:4], cfg.replace(schedule="depth_first"), progress=False, checkpoint=path)


def test_a_checkpoint_of_another_edit_is_refused(tiny, tok, facts, tmp_path):
    cfg = wb.EditConfig(**{**FAST, "early_stop_loss": 1e-9}, epochs=3, batch_size=2)
    path = tmp_path / "edit.ckpt"
    from workbench.methods.ft import EpochCheckpoint

    EpochCheckpoint(path, {"config": "another"}, 0.0).write({"epoch": 1})
    with pytest.raises(EditError, match="holds the checkpoint of another edit"):
        wb.edit(tiny, tok, facts[:4], cfg, progress=False, checkpoint=path)
