"""CUDA: every method on the untied tiny model (its own head, as Llama-3-8B) in fp32 and bf16, against
the same edit on the CPU, reverting bitwise; a model spread over the GPU and the CPU with its embedding
offloaded; statistics, solves and projectors on the card. Marked ``gpu`` and skipped without CUDA
(`make test-gpu` and `benchmarks/gpu_check.sh` run them, installing nothing).

Tolerances: fp32 on the GPU against fp32 on the CPU differs only by kernel rounding (TF32 off), so
the trained deltas agree to 1e-3 of their size; bf16 is checked for a finite, reverted, non-zero edit."""
import pytest
import torch

import workbench as wb
from workbench.models import state_hash

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

UNTIED = "tiny-random-llama-untied"
REQUESTS = [{"prompt": "The capital of Zorbia is", "target": "Quxville", "subject": "Zorbia"},
            {"prompt": "Alice Lindqvist works as a", "target": "lighthouse keeper", "subject": "Alice Lindqvist"}]
LOCATE = dict(model_name=UNTIED, mom2_tokens=500, v_steps=5)
KEYS = dict(n_prefixes=2, prefix_tokens=3)  # ROME, MEMIT, AlphaEdit
CONFIGS = {
    "ft": wb.EditConfig(model_name=UNTIED, layers=(2,), epochs=4, batch_size=2, lr=1e-2),
    "ft-depth-first": wb.EditConfig(model_name=UNTIED, layers=(2,), schedule="depth_first", steps_per_edit=4,
                                    batch_size=1, lr=1e-2),
    "lora": wb.EditConfig(model_name=UNTIED, method="lora", layers=(2,), epochs=4, batch_size=2, lr=1e-2),
    "adalora": wb.EditConfig(model_name=UNTIED, method="adalora", layers=(2,), epochs=4, batch_size=2, lr=1e-2),
    "rome": wb.EditConfig(method="rome", **KEYS, layers=(2,), **LOCATE),
    "memit": wb.EditConfig(method="memit", **KEYS, layers=(1, 2), **LOCATE),
    "alphaedit": wb.EditConfig(method="alphaedit", **KEYS, layers=(1, 2), nullspace_threshold=1e6, **LOCATE),
    "unke": wb.EditConfig(method="unke", layers=(2,), key_position="prompt_last", unke_steps=5, **LOCATE),
    "anyedit": wb.EditConfig(method="anyedit", layers=(2,), key_position="prompt_last", unke_steps=5, **LOCATE),
}


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp(min=1e-12))


@pytest.mark.parametrize("method", list(CONFIGS))
def test_every_method_on_cuda_matches_the_cpu_and_reverts(method, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    cpu, tok = wb.load(UNTIED, device="cpu")
    gpu, _ = wb.load(UNTIED, device="cuda", dtype="float32")
    before = state_hash(gpu)
    a = wb.edit(cpu, tok, REQUESTS, CONFIGS[method], progress=False)
    b = wb.edit(gpu, tok, REQUESTS, CONFIGS[method], progress=False)
    da, db = a.deltas(), b.deltas()
    assert da.keys() == db.keys() and da
    for name in da:
        assert relative(db[name], da[name]) < 1e-3, name
    b.revert()
    assert state_hash(gpu) == before


@pytest.mark.parametrize("method", list(CONFIGS))
def test_every_method_in_bf16_trains_float32_weights_and_reverts(method, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    model, tok = wb.load(UNTIED, device="cuda", dtype="bfloat16")
    before = state_hash(model)
    res = wb.edit(model, tok, REQUESTS, CONFIGS[method], progress=False)
    deltas = res.deltas()
    assert all(torch.isfinite(d.float()).all() for d in deltas.values())
    assert any(d.float().abs().sum() > 0 for d in deltas.values())
    if method.startswith("ft"):
        assert model.model.layers[2].mlp.down_proj.weight.dtype == torch.float32  # the float32 master
    res.revert()
    assert state_hash(model) == before and model.model.layers[2].mlp.down_proj.weight.dtype == torch.bfloat16


@pytest.mark.parametrize("method", ["ft", "rome", "memit", "alphaedit", "unke"])
def test_a_model_spread_over_the_gpu_and_the_cpu_edits_like_one_gpu(method, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    one, tok = wb.load(UNTIED, device="cuda", dtype="float32")
    # the embedding on the GPU, layers 0-1 offloaded to the CPU behind it (meta placeholders), the rest on the GPU
    spread, _ = wb.load(UNTIED, dtype="float32", device_map={
        "model.embed_tokens": 0, "model.layers.0": "cpu", "model.layers.1": "cpu", "model.layers.2": 0,
        "model.layers.3": 0, "model.norm": 0, "model.rotary_emb": 0, "lm_head": 0}, offload_dir=str(tmp_path))
    assert wb.models.input_device(spread).type == "cuda"
    cfg = CONFIGS[method].replace(layers=(2,) if method not in ("memit", "alphaedit") else (2, 3))
    before = state_hash(spread)
    a, b = wb.edit(one, tok, REQUESTS, cfg, progress=False), wb.edit(spread, tok, REQUESTS, cfg, progress=False)
    for name, d in a.deltas().items():
        assert relative(b.deltas()[name], d) < 1e-4, name
    report = wb.evaluate(spread, tok, wb.data.as_requests(REQUESTS),
                         wb.EvalConfig.preset("locft").replace(splits=("ori",), max_new_tokens=6))
    assert 0.0 <= report.scores()["ori.exact_match"] <= 1.0
    b.revert()
    assert state_hash(spread) == before


def test_an_offloaded_embedding_behind_the_gpu_takes_inputs_on_the_gpu(tmp_path):
    spread, tok = wb.load(UNTIED, dtype="float32", device_map={
        "model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": 0, "model.layers.2": 0,
        "model.layers.3": 0, "model.norm": 0, "model.rotary_emb": 0, "lm_head": 0}, offload_dir=str(tmp_path))
    assert spread.model.embed_tokens.weight.device.type == "meta"
    assert wb.models.input_device(spread) == torch.device("cuda", 0)
    one, _ = wb.load(UNTIED, device="cuda", dtype="float32")
    assert wb.generate(spread, tok, ["Hello"], max_new_tokens=5) == wb.generate(one, tok, ["Hello"], max_new_tokens=5)


def test_statistics_on_the_card_match_the_cpu(tmp_path, monkeypatch):
    from workbench.methods import locate

    got = []
    for i, device in enumerate(("cpu", "cuda")):
        monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / device))
        locate.STATS.clear()
        model, tok = wb.load(UNTIED, device=device, dtype="float32")
        got.append(locate.second_moments(model, tok, [1, 2], n_tokens=2000, progress=False))
    locate.STATS.clear()
    for layer in (1, 2):
        assert got[1][layer].device.type == "cpu"  # kept on the CPU between edits (the solves move it)
        assert relative(got[1][layer], got[0][layer]) < 1e-5


def test_edit_each_on_cuda_equals_one_edit_at_a_time():
    model, tok = wb.load(UNTIED, device="cuda", dtype="float32")
    cfg = wb.EditConfig(model_name=UNTIED, layers=(2,), schedule="depth_first", steps_per_edit=6, lr=1e-2)
    reqs = wb.data.as_requests(REQUESTS)
    together = wb.edit_each(model, tok, reqs, cfg, progress=False)
    for r, res in zip(reqs, together):
        alone = wb.edit(model, tok, [r], cfg, progress=False)
        name = next(iter(alone.deltas()))
        assert relative(res.deltas()[name], alone.deltas()[name]) < 1e-4
        alone.revert()


def test_the_memory_guard_sees_the_allocators_cache_as_free():
    from workbench import resources

    torch.cuda.empty_cache()
    x = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")  # 256 MiB
    del x  # freed to PyTorch's cache, still reserved in the driver's eyes
    assert resources.available_bytes("cuda") >= torch.cuda.mem_get_info()[0] + 200 * 2**20
