"""Models spread over devices: the tiny model dispatched over "cpu" and "disk" edits exactly like the
plain one, reverts bitwise and evaluates; placement plans for the 8B and 72B shapes keep layers whole
and leave the edited layer's device room for the edit."""
from collections import Counter

import pytest
import torch

import workbench as wb
from workbench import placement, prompts
from workbench.errors import ConfigError
from workbench.methods.ft import example_losses
from workbench.models import input_device, spec, state_hash

# layers 0 and 1 on disk (weights in the offload folder, loaded for each forward), the rest on the CPU
SPREAD = {"model.embed_tokens": "cpu", "model.layers.0": "disk", "model.layers.1": "disk", "model.layers.2": "cpu",
          "model.layers.3": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
REQUESTS = [{"prompt": "The capital of Zorbia is", "target": "Quxville"},
            {"prompt": "Alice Lindqvist works as a", "target": "lighthouse keeper"}]


@pytest.fixture
def pair(tmp_path):
    """The same tiny model twice: plain, and dispatched over cpu and disk."""
    plain, tok = wb.load("tiny-random-llama", device="cpu")
    spread, _ = wb.load("tiny-random-llama", device_map=SPREAD, offload_dir=str(tmp_path / "offload"))
    return plain, spread, tok


def test_dispatch_offloads_and_keeps_the_weights(pair):
    plain, spread, _ = pair
    assert spread.model.layers[0].mlp.down_proj.weight.device.type == "meta"  # really on disk
    assert placement.offloaded(spread) and input_device(spread) == torch.device("cpu")
    assert state_hash(spread) == state_hash(plain)


@pytest.mark.parametrize("prefix_cache", [True, False])
def test_dispatched_edit_matches_the_plain_one_and_reverts(pair, prefix_cache, tmp_path):
    plain, spread, tok = pair
    cfg = wb.EditConfig(model_name="tiny-random-llama", layers=(2,), epochs=4, batch_size=2, lr=1e-2,
                        prefix_cache=prefix_cache)
    before = state_hash(spread)
    a = wb.edit(plain, tok, REQUESTS, cfg, progress=False)
    b = wb.edit(spread, tok, REQUESTS, cfg, progress=False)
    assert b.prefix_cache.startswith("on") == prefix_cache
    assert torch.allclose(torch.tensor(a.log.loss.tolist()), torch.tensor(b.log.loss.tolist()), atol=1e-5)
    w = "model.layers.2.mlp.down_proj.weight"
    assert torch.allclose(dict(plain.named_parameters())[w], dict(spread.named_parameters())[w], atol=1e-5)
    edited = dict(spread.named_parameters())[w].detach().clone()
    delta = b.save(tmp_path / "delta.safetensors")
    b.revert()
    assert state_hash(spread) == before
    applied = wb.apply_delta(spread, delta)  # the delta file loads back onto the dispatched model
    assert torch.allclose(dict(spread.named_parameters())[w], edited, atol=1e-6)  # original + (edited - original)
    applied.revert()
    assert state_hash(spread) == before
    assert spread.model.layers[0].forward.__qualname__ != "_identity"  # accelerate's hook is back


def test_dispatched_gradients_match(pair):
    plain, spread, tok = pair
    batch = prompts.collate([prompts.encode(tok, r["prompt"], r["target"], "target", True, 64) for r in REQUESTS],
                            spec(tok).pad_id)
    grads = []
    for model in (plain, spread):
        w = model.model.layers[2].mlp.down_proj.weight
        w.requires_grad_(True)
        example_losses(model, batch).mean().backward()
        grads.append(w.grad.clone())
        w.requires_grad_(False)
        w.grad = None
    assert grads[0].abs().sum() > 0 and torch.allclose(grads[0], grads[1], atol=1e-5)


def test_dispatched_model_evaluates_like_the_plain_one(pair, facts):
    plain, spread, tok = pair
    cfg = wb.EvalConfig.preset("locft").replace(splits=("ori", "para"), max_new_tokens=8)
    a, b = (wb.evaluate(m, tok, facts[:3], cfg).scores() for m in (plain, spread))
    assert a == b


def test_an_offloaded_layer_is_not_trained(pair):
    _, spread, tok = pair
    before = state_hash(spread)
    with pytest.raises(ConfigError, match="offloaded"):
        wb.edit(spread, tok, REQUESTS, wb.EditConfig(model_name="tiny-random-llama", layers=(1,)), progress=False)
    assert state_hash(spread) == before


def test_auto_map_from_a_budget(tmp_path):
    # 14 MB of CPU: the 12.6 MB embedding and the small layers, so the plan must use the disk for the rest
    model, _ = wb.load("tiny-random-llama", device_map="auto", max_memory={"cpu": 13_100_000, "disk": None},
                       offload_dir=str(tmp_path))
    assert Counter(model.hf_device_map.values())["disk"] >= 1


@pytest.mark.parametrize("shape,budgets", [("llama-3-8b", {0: "6GiB", 1: "6GiB", 2: "6GiB", "cpu": "40GiB"}),
                                           ("qwen2.5-72b", {i: "40GiB" for i in range(4)} | {"cpu": "200GiB"})])
def test_plans_keep_layers_whole_and_room_for_the_edit(shape, budgets):
    model, _ = wb.load(f"random:{shape}", device="meta", dtype="bfloat16")
    assert placement.is_random(model) and all(p.device.type == "meta" for p in model.parameters())
    n = len(model.model.layers)
    edited, reserve = n * 2 // 3, 3 * 2**30
    plan = placement.plan(model, budgets, torch.bfloat16, edited_layers=[edited], reserve=reserve)
    layer_keys = [k for k in plan if k.startswith("model.layers.")]
    assert layer_keys == [f"model.layers.{i}" for i in range(n)]  # every decoder layer whole, in order
    sizes, used = placement.unit_bytes(model, torch.bfloat16), Counter()
    for unit, d in plan.items():
        used[d] += sizes[unit]
    home = plan[f"model.layers.{edited}"]
    for d, budget in budgets.items():
        room = placement.bytes_of(budget) - used[d]
        assert room >= (reserve if d == home else 0), (d, room)
    order = list(budgets)
    assert [order.index(plan[k]) for k in layer_keys] == sorted(order.index(plan[k]) for k in layer_keys)
    # with the prefix cache, the frozen bottom goes to the CPU and the fast devices keep the rest
    low = placement.plan(model, budgets, torch.bfloat16, edited_layers=[edited], reserve=reserve, offload_below=True)
    assert all(low[f"model.layers.{i}"] == "cpu" for i in range(edited))
    assert all(low[f"model.layers.{i}"] != "cpu" for i in range(edited, n))


def test_a_plan_that_cannot_fit_says_so():
    model, _ = wb.load("random:llama-3-8b", device="meta", dtype="bfloat16")
    with pytest.raises(ConfigError, match="fits on none"):
        placement.plan(model, {0: "4GiB", 1: "4GiB"}, torch.bfloat16)
    with pytest.raises(ConfigError, match="llama-3-8b"):
        placement.shape_config("llama-3-9b")


def test_random_shapes_have_the_published_sizes():
    counts = {}
    for name in ("llama-3-8b", "qwen2.5-7b", "mistral-7b"):
        model, _ = wb.load(f"random:{name}", device="meta")
        counts[name] = sum(p.numel() for p in model.parameters())
    # billions of parameters as published (Llama-3-8B 8.03, Qwen2.5-7B 7.62, Mistral-7B 7.24)
    assert {k: round(v / 1e9, 2) for k, v in counts.items()} == {"llama-3-8b": 8.03, "qwen2.5-7b": 7.62,
                                                                  "mistral-7b": 7.24}


def test_the_report_refuses_random_weights(tmp_path):
    from workbench.cli import main

    with pytest.raises(SystemExit, match="random weights"):
        main(["reproduce", "layer", "-p", "model_name", "random:llama-3-8b", "--docs", str(tmp_path)])
    assert not list(tmp_path.iterdir())  # refused before anything ran or was written


@pytest.mark.parametrize("name,shape", [("locft-bf-llama3-8b", "llama-3-8b"), ("locft-bf-qwen2.5-7b", "qwen2.5-7b"),
                                        ("locft-bf-mistral-7b", "mistral-7b"), ("ft-uke-llama3-8b", "llama-3-8b"),
                                        ("ft-uke-qwen2.5-7b", "qwen2.5-7b")])
def test_big_model_presets_fit_their_architecture(name, shape):
    from workbench.components import resolve

    cfg = wb.preset(name)
    model, _ = wb.load(f"random:{shape}", device="meta")
    targets = resolve(model, cfg.components, cfg.layers)
    assert targets and cfg.model_name.lower().replace("meta-llama-3", "llama-3").count(shape.split("-")[0]) >= 1
    expected = {"locft-bf-llama3-8b": "model.layers.22.mlp.down_proj", "locft-bf-qwen2.5-7b": "model.layers.6.mlp.down_proj",
                "locft-bf-mistral-7b": "model.layers.23"}
    if name in expected:  # the official recipes (REFERENCE.md)
        assert [t.name for t in targets] == [expected[name]] and cfg.batch_size == 100 and cfg.epochs == 25
        assert cfg.lr == (5e-5 if "mistral" in name else 5e-4) and cfg.dtype == "float32"


def test_the_memory_guard_budgets_each_device(tiny, tok):
    from workbench import resources

    cfg = wb.EditConfig(layers=(2,), batch_size=4)
    examples = [prompts.encode(tok, r["prompt"], r["target"], "target", True, 64) for r in REQUESTS]
    parts = resources.edit_bytes(tiny, cfg, examples, 8192, 2, 4, prefix_bytes=1000)
    # "meta" stands in for a second device (the guard does not check it: shapes only)
    split = resources.check_edit(tiny, cfg, examples, 8192, 2, 4, 1000, layer_devices=["cpu", "cpu", "meta", "meta"],
                                 head_device="cpu")["by_device"]
    assert split["meta"] == parts["trainable"] + parts["prefix_cache"] + parts["activations"] // 2 * 2
    assert split["cpu"] == parts["logits"]


@pytest.mark.parametrize("method", ["rome", "unke"])
def test_locate_methods_refuse_an_offloaded_layer(pair, method):
    _, spread, tok = pair
    cfg = wb.EditConfig(model_name="tiny-random-llama", method=method, layers=(1,), mom2_tokens=0, v_steps=2,
                        unke_steps=2, key_position="prompt_last")
    with pytest.raises(ConfigError, match="offloaded"):
        wb.edit(spread, tok, REQUESTS, cfg, progress=False)


def test_rome_edits_a_dispatched_model_like_the_plain_one(pair):
    plain, spread, tok = pair
    cfg = wb.EditConfig(model_name="tiny-random-llama", method="rome", layers=(2,), mom2_tokens=0, v_steps=3,
                        n_prefixes=2, prefix_tokens=3, key_position="prompt_last")
    before = state_hash(spread)
    a, b = wb.edit(plain, tok, REQUESTS[:1], cfg, progress=False), wb.edit(spread, tok, REQUESTS[:1], cfg, progress=False)
    w = "model.layers.2.mlp.down_proj.weight"
    assert torch.allclose(a.deltas()[w], b.deltas()[w], atol=1e-5) and a.deltas()[w].abs().sum() > 0
    b.revert()
    assert state_hash(spread) == before
