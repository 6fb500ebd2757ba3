"""The prefix-activation cache gives the plain path's losses and gradients (fp32, to 1e-5).

Each family gets a tiny random model; examples have different lengths, so batches are left-padded,
and the batches are composed differently from the cache's own (length-sorted) chunks, so padding,
attention masks and positions all differ between the two paths.
"""
import pytest
import torch
from transformers import AutoModelForCausalLM, GemmaConfig, GPT2Config, LlamaConfig, Qwen2Config

import workbench as wb
from workbench import prompts
from workbench.components import family_table, resolve
from workbench.methods import locate
from workbench.methods.prefix import PrefixCache
from workbench.methods.ft import example_losses

SMALL = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64)
CONFIGS = {
    "llama": lambda: LlamaConfig(**SMALL),
    # a sliding window shorter than the examples, on the lower layers only: two kinds of mask
    "qwen2": lambda: Qwen2Config(**SMALL, use_sliding_window=True, sliding_window=5, max_window_layers=2),
    "gemma": lambda: GemmaConfig(**SMALL, head_dim=8),
    "gpt2": lambda: GPT2Config(vocab_size=128, n_embd=32, n_layer=4, n_head=4, n_positions=64),
}
PAD = 0


def examples(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        length = 6 + (7 * i) % 11  # 6..16 tokens
        ids = torch.randint(1, 128, (length,), generator=g).tolist()
        n_target = 2 + i % 3
        out.append(prompts.Encoded(ids, [prompts.IGNORE] * (length - n_target) + ids[-n_target:], length - n_target, False))
    return out


def loss_and_grad(model, param, exs, idx, cache=None):
    param.grad = None
    if cache is not None:
        cache.replay(idx)
    losses = example_losses(model, prompts.collate([exs[i] for i in idx], PAD))
    losses.mean().backward()
    return losses.detach(), param.grad.detach().clone()


@pytest.mark.parametrize("family", list(CONFIGS))
@pytest.mark.parametrize("layer", [1, 3])
def test_cached_losses_and_gradients_match(family, layer):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(CONFIGS[family]()).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    (target,) = resolve(model, ("down",), (layer,))
    param = model.get_submodule(target.name).weight
    param.requires_grad_(True)
    exs = examples()
    batches = [[5, 0, 3], [1, 4], [2, 5, 1, 0]]
    plain = [loss_and_grad(model, param, exs, b) for b in batches]

    cache = PrefixCache(model, layer, exs, PAD, chunk=2)
    cache.install()
    try:
        cached = [loss_and_grad(model, param, exs, b, cache) for b in batches]
    finally:
        cache.remove()
    for (l0, g0), (l1, g1) in zip(plain, cached):
        torch.testing.assert_close(l1, l0, atol=1e-5, rtol=0)
        torch.testing.assert_close(g1, g0, atol=1e-5, rtol=0)
        assert g0.abs().max() > 1e-4  # the gradient is not trivially zero
    layers = model.get_submodule(family_table(model)["layers"])
    assert all("forward" not in m.__dict__ for m in layers)  # removed cleanly
    # and the model is its plain self again
    l2, _ = loss_and_grad(model, param, exs, batches[0])
    torch.testing.assert_close(l2, plain[0][0], atol=0, rtol=0)


@pytest.mark.parametrize("family", list(CONFIGS))
@pytest.mark.parametrize("layer", [0, 2])
def test_values_that_run_from_the_key_tokens_on_equal_full_passes(family, layer):
    # Locate-and-edit values: with prefix_cache the positions before the first key token run once
    # (`locate.Before`) and, above layer 0, the layers below the value layer too. δ, h and the steps
    # taken must be those of full passes, for every family's masks and positions (Qwen2's sliding
    # window is shorter than the rows), with ROME's KL rows and an AnyEdit fixed vector that sits
    # before its request's key token (so it, not the key, sets where the split is).
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(CONFIGS[family]()).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    exs = examples(10, seed=1)
    def group(rewrite, kl):
        keys = [e.n_prompt - 1 - i % 3 for i, e in enumerate(rewrite)] + [len(exs[kl].input_ids) // 2]
        return locate.Rows(rewrite + [exs[kl]], keys, len(rewrite), PAD)
    groups = [group(exs[0:3], 3), group(exs[4:6], 6), group(exs[7:9], 9)]
    d = model.config.get_text_config().hidden_size
    groups[1].fixed = [(2, torch.randn(d))]
    module = model.get_submodule(family_table(model)["layers"])[layer]
    cfg = wb.preset("memit", v_steps=6, v_lr=0.5, kl_factor=0.0625, value_batch=3)
    with locate.frozen_eval(model):
        split = locate.values(model, module, groups, cfg)
        full = locate.values(model, module, groups, cfg.replace(prefix_cache=False))
    assert split.steps == full.steps == [5, 5, 5]
    assert full.delta.norm() > 0
    torch.testing.assert_close(split.h, full.h, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(split.delta, full.delta, atol=1e-5, rtol=1e-4)


def edit_pair(tiny, tok, facts, **kw):
    """The same edit with and without the cache, from the same weights."""
    cfg = wb.EditConfig(model_name="tiny-random-llama", layers=(2,), lr=1e-2, epochs=6, batch_size=2, **kw)
    on = wb.edit(tiny, tok, facts, cfg, progress=False)
    w_on = {n: p.detach().clone() for n, p in tiny.named_parameters()}
    on.revert()
    off = wb.edit(tiny, tok, facts, cfg.replace(prefix_cache=False), progress=False)
    w_off = {n: p.detach().clone() for n, p in tiny.named_parameters()}
    off.revert()
    return on, off, w_on, w_off


@pytest.mark.parametrize("method", ["ft", "lora"])
def test_edit_with_and_without_cache_agree(tiny, tok, facts, method):
    before = wb.models.state_hash(tiny)
    on, off, w_on, w_off = edit_pair(tiny, tok, facts, method=method, chat_template=False)
    assert on.prefix_cache.startswith("on: layers 0..1") and off.prefix_cache.startswith("off")
    assert len(on.log) == len(off.log)
    torch.testing.assert_close(torch.tensor(on.log["loss"].values), torch.tensor(off.log["loss"].values),
                               atol=1e-4, rtol=1e-4)
    if method == "ft":
        torch.testing.assert_close(w_on, w_off, atol=1e-4, rtol=1e-4)
    assert wb.models.state_hash(tiny) == before


def test_cache_falls_back_and_says_why(tiny, tok, facts):
    base = wb.EditConfig(model_name="tiny-random-llama", lr=1e-2, epochs=2)
    r = wb.edit(tiny, tok, facts, base.replace(layers=(0,)), progress=False)
    assert "layer 0" in r.prefix_cache
    r.revert()
    r = wb.edit(tiny, tok, facts, base.replace(layers=(2,), epochs=1), progress=False)
    assert "visited once" in r.prefix_cache
    r.revert()
    r = wb.edit(tiny, tok, facts, base.replace(layers=(2,), schedule="depth_first", steps_per_edit=3),
                progress=False)
    assert r.prefix_cache.startswith("on")
    r.revert()


def test_an_error_mid_edit_removes_the_short_circuit(tiny, tok, facts, monkeypatch):
    before = wb.models.state_hash(tiny)
    calls = {"n": 0}
    real = wb.methods.ft.example_losses

    def failing(model, batch):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(model, batch)

    monkeypatch.setattr(wb.methods.ft, "example_losses", failing)
    with pytest.raises(KeyboardInterrupt):
        wb.edit(tiny, tok, facts, wb.EditConfig(model_name="tiny-random-llama", layers=(2,), lr=1e-2), progress=False)
    assert all("forward" not in m.__dict__ for m in tiny.model.layers)
    assert wb.models.state_hash(tiny) == before


def test_a_cache_too_big_for_memory_goes_to_a_mapped_file_and_gives_the_same_edit(tiny, tok, facts, monkeypatch,
                                                                                  tmp_path):
    """Memory stays flat at any number of edits: past the budgets the states live in a memory-mapped
    file (deleted when the edit ends), and the edit is the in-memory one."""
    # one thread count for both edits: the thread policy counts the processes registered in the
    # cache folder, which changes below, and other float sums would differ by more than rounding
    monkeypatch.setenv("WORKBENCH_THREADS", "1")
    cfg = wb.EditConfig(model_name="tiny-random-llama", layers=(2,), lr=1e-2, epochs=3)
    r = wb.edit(tiny, tok, facts, cfg, progress=False)
    in_memory = {n: p.detach().clone() for n, p in tiny.named_parameters() if n in r.originals}
    r.revert()
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    monkeypatch.setattr(wb.methods.prefix, "HOST_SHARE", 1e-12)
    monkeypatch.setattr(wb.methods.prefix, "DEVICE_BUDGET_BYTES", 0)
    r = wb.edit(tiny, tok, facts, cfg, progress=False)
    assert " on disk (" in r.prefix_cache, r.prefix_cache
    assert list((tmp_path / "prefix").iterdir()) == []  # the file went with the edit
    params = dict(tiny.named_parameters())
    for n, w in in_memory.items():  # the same states, read from the file
        torch.testing.assert_close(params[n].detach(), w, atol=1e-6, rtol=0)
    r.revert()


def test_a_bf16_cache_halves_the_memory_and_stays_close(tiny, tok, facts):
    """prefix_cache_dtype='bfloat16' rounds the cached states (2 bytes instead of 4): the first loss
    agrees with the fp32 cache's to 1e-2 relative, not exactly."""
    cfg = wb.EditConfig(model_name="tiny-random-llama", layers=(2,), lr=1e-2, epochs=3, early_stop_loss=0.0)
    full = wb.edit(tiny, tok, facts, cfg, progress=False)
    full.revert()
    half = wb.edit(tiny, tok, facts, cfg.replace(prefix_cache_dtype="bfloat16"), progress=False)
    half.revert()
    assert "stored as bfloat16" in half.prefix_cache
    a, b = full.log.loss.iloc[0], half.log.loss.iloc[0]
    assert a != b and abs(a - b) <= 1e-2 * a
    exs = [wb.prompts.encode(tok, f.prompt, f.target) for f in wb.data.as_requests(facts)]
    assert wb.methods.prefix.nbytes_for(tiny, exs, "bfloat16") * 2 == wb.methods.prefix.nbytes_for(tiny, exs)
