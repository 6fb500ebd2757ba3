"""Models spread over devices: the tiny model dispatched over "cpu" and "disk" edits exactly like the
plain one, reverts bitwise and evaluates; placement plans for the 8B and 72B shapes keep layers whole
and leave the edited layer's device room for the edit."""
from collections import Counter

import pytest
import torch

import workbench as wb
from workbench.config import applicable
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
    # with the prefix cache, the frozen bottom goes to the CPU when the GPUs cannot hold everything
    # (the 8B's 18 GiB of cards); when they can (the 72B's 160 GiB), nothing is offloaded
    low = placement.plan(model, budgets, torch.bfloat16, edited_layers=[edited], reserve=reserve, offload_below=True)
    fits = "cpu" not in plan.values()
    assert all((low[f"model.layers.{i}"] == "cpu") != fits for i in range(edited))
    assert all(low[f"model.layers.{i}"] != "cpu" for i in range(edited, n)) and low["model.embed_tokens"] != "cpu"


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
                        key_position="prompt_last", **applicable(method, {"unke_steps": 2}))
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


# ------------------------------------------------------------------ first contact with a GPU (issue 40)
# Behind a GPU, accelerate leaves what it offloads to "cpu" as meta placeholders, as it does for "disk"
# on the CPU: an untied model with its embedding on disk is that situation, on a machine without a GPU.
UNTIED = "tiny-random-llama-untied"
EMBED_ON_DISK = {**SPREAD, "model.embed_tokens": "disk"}
LOCATE = dict(model_name=UNTIED, mom2_tokens=100, v_steps=3, n_prefixes=1, prefix_tokens=2, key_position="prompt_last",
              unke_steps=2)


@pytest.fixture(scope="module")
def untied(tmp_path_factory):
    """The untied tiny model twice: plain, and dispatched with its embedding (and layers 0-1) on disk."""
    plain, tok = wb.load(UNTIED, device="cpu")
    spread, _ = wb.load(UNTIED, device_map=EMBED_ON_DISK, offload_dir=str(tmp_path_factory.mktemp("offload")))
    return plain, spread, tok


def test_an_offloaded_embedding_takes_inputs_where_it_computes(untied):
    plain, spread, tok = untied
    assert spread.model.embed_tokens.weight.device.type == "meta"  # the placeholder a GPU run would see
    assert input_device(spread) == torch.device("cpu")
    assert wb.generate(spread, tok, ["Hello"], max_new_tokens=4) == wb.generate(plain, tok, ["Hello"], max_new_tokens=4)


@pytest.mark.parametrize("cfg", [
    wb.EditConfig(model_name=UNTIED, layers=(2,), epochs=3, batch_size=2, lr=1e-2),
    wb.EditConfig(model_name=UNTIED, layers=(2,), epochs=3, batch_size=2, lr=1e-2, prefix_cache=False),
    wb.EditConfig(method="rome", layers=(2,), **applicable("rome", LOCATE)),
    wb.EditConfig(method="memit", layers=(2, 3), **applicable("memit", LOCATE)),
    wb.EditConfig(method="alphaedit", layers=(2, 3), nullspace_threshold=1e6, **applicable("alphaedit", LOCATE)),  # P = I: a visible update
    wb.EditConfig(method="unke", layers=(2,), **applicable("unke", LOCATE)),
], ids=["ft", "ft-no-cache", "rome", "memit", "alphaedit", "unke"])
def test_every_method_edits_a_model_with_an_offloaded_embedding_like_the_plain_one(untied, cfg, tmp_path, monkeypatch):
    plain, spread, tok = untied
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))  # statistics computed here, on each model
    before = state_hash(spread)
    a = wb.edit(plain, tok, REQUESTS, cfg, progress=False)
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "spread"))
    b = wb.edit(spread, tok, REQUESTS, cfg, progress=False)
    try:
        da, db = a.deltas(), b.deltas()
        assert da.keys() == db.keys() and any(d.abs().sum() > 0 for d in da.values())
        for name in da:
            assert torch.allclose(da[name], db[name], atol=1e-4), name
        report = wb.evaluate(spread, tok, wb.data.as_requests(REQUESTS),
                             wb.EvalConfig.preset("locft").replace(splits=("ori",), max_new_tokens=4))
        assert 0.0 <= report.scores()["ori.exact_match"] <= 1.0
    finally:
        a.revert()
        b.revert()
    assert state_hash(spread) == before


def test_statistics_of_an_offloaded_model_are_those_of_its_weights(untied, tmp_path, monkeypatch):
    from workbench.methods import locate

    plain, spread, tok = untied
    assert locate.stats_key(spread, 2, "mmlu-x", 100) == locate.stats_key(plain, 2, "mmlu-x", 100)
    got = []
    for i, model in enumerate((plain, spread)):
        monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / str(i)))  # computed, not read from a cache
        locate.STATS.clear()
        got.append(locate.second_moments(model, tok, [2, 3], n_tokens=200, progress=False))
    locate.STATS.clear()
    for layer in (2, 3):
        assert torch.allclose(got[0][layer], got[1][layer], rtol=1e-5, atol=1e-7)


def test_a_dispatched_model_falls_back_from_parallel_single_edits(untied):
    from workbench.methods.parallel import batchable

    plain, spread, tok = untied
    cfg = wb.EditConfig(model_name=UNTIED, layers=(2,), epochs=2)
    assert batchable(plain, cfg) and not batchable(spread, cfg)  # a sweep edits one request at a time here
    with pytest.raises(ConfigError, match="once per request"):
        wb.edit_each(spread, tok, wb.data.as_requests(REQUESTS), cfg, progress=False)


def test_solves_bring_the_statistics_to_the_keys_and_name_a_placeholder():
    from workbench.errors import EditError
    from workbench.methods import locate, memit, rome

    g = torch.Generator().manual_seed(0)
    k, k_bar, delta, w = (torch.randn(8, generator=g), torch.randn(8, generator=g), torch.randn(4, generator=g),
                          torch.randn(4, 8, generator=g))
    c = torch.eye(8) + 0.1 * torch.ones(8, 8)
    assert torch.allclose(rome.rank_one(w, k, k_bar, delta, c) @ k, delta, atol=1e-5)  # W' k = W k + δ
    on_meta = c.to("meta")  # statistics on another device type than the keys
    with pytest.raises(EditError, match="statistics C.*meta"):
        rome.rank_one(w, k, k_bar, delta, on_meta)
    with pytest.raises(EditError, match="statistics C.*meta"):
        locate.solve(torch.randn(4, 2, generator=g), torch.randn(8, 2, generator=g), on_meta, 1.0)
    with pytest.raises(EditError, match="projector.*meta"):
        memit.alphaedit_solve(torch.randn(4, 2), torch.randn(8, 2), on_meta, None, 1.0)


def test_plans_keep_the_edited_layer_and_the_embedding_on_the_gpu(monkeypatch):
    from workbench import models, prompts as P

    eight, _ = wb.load("random:llama-3-8b", device="meta", dtype="bfloat16")
    one_card = {0: "79GiB", "cpu": "100GiB", "disk": None}
    plan = placement.plan(eight, one_card, torch.bfloat16, edited_layers=[22], reserve=3 * 2**30, offload_below=True)
    assert set(plan.values()) == {0}  # everything fits: nothing is offloaded (it was {'cpu': 23, 0: 13})
    small = placement.plan(eight, {0: "12GiB", "cpu": "100GiB"}, torch.bfloat16, edited_layers=[22],
                           reserve=3 * 2**30, offload_below=True)
    assert small["model.layers.21"] == "cpu" and small["model.layers.22"] == 0 and small["model.embed_tokens"] == 0
    big, _ = wb.load("random:qwen2.5-72b", device="meta", dtype="bfloat16")
    plan = placement.plan(big, {0: "79GiB", "cpu": "200GiB", "disk": None}, torch.bfloat16, edited_layers=[60],
                          reserve=3 * 2**30, offload_below=True)
    assert plan["model.layers.60"] == 0 and plan["model.embed_tokens"] == 0  # layer 60 was planned onto "cpu"
    with pytest.raises(ConfigError, match="model.layers.60"):  # refused before anything loads
        placement.plan(big, {0: "20GiB", "cpu": "200GiB"}, torch.bfloat16, edited_layers=[60], reserve=3 * 2**30)
    # the reserve is the memory guard's estimate for the real examples, not 256 tokens each (118.5 GiB)
    cfg = wb.preset("locft-bf-llama3-8b")
    shape = models._meta_shape("random:llama-3-8b", torch.float32)
    tok = wb.load("tiny-random-llama", device="meta")[1]
    examples = [P.encode(tok, r.prompt, r.target, cfg.loss_scope, cfg.chat_template, cfg.max_length)
                for r in wb.data.load("zsre", n=200)]
    reserve = models.edit_reserve(cfg, shape, examples)
    targets = wb.components.resolve(shape, cfg.components, cfg.layers)
    n_trainable = sum(p.numel() for t in targets for p in shape.get_submodule(t.name).parameters())
    from workbench import resources
    assert reserve == sum(resources.edit_bytes(shape, cfg, examples, n_trainable, 22, 32).values())
    assert 8 * 2**30 < reserve < 24 * 2**30  # ~16 GiB
    plan = placement.plan(shape, {0: "79GiB", "cpu": "100GiB"}, torch.float32, edited_layers=[22], reserve=reserve,
                          offload_below=True)
    assert set(plan.values()) == {0}


def test_the_memory_guard_counts_the_allocators_cache_as_free(monkeypatch):
    from workbench import resources

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2 * 2**30, 80 * 2**30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 10 * 2**30)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 4 * 2**30)
    assert resources.available_bytes("cuda:0") == 8 * 2**30  # 2 free for the driver + 6 cached by torch
