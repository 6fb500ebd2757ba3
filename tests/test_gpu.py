"""CUDA: the edit, the revert, bf16 with float32 trained weights, and a model spread over the GPU and
the CPU. Marked ``gpu`` and skipped without CUDA (`make test-gpu` on a GPU machine)."""
import pytest
import torch

import workbench as wb
from workbench.models import state_hash

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

REQUESTS = [{"prompt": "The capital of Zorbia is", "target": "Quxville"},
            {"prompt": "Alice Lindqvist works as a", "target": "lighthouse keeper"}]
CFG = wb.EditConfig(model_name="tiny-random-llama", layers=(2,), epochs=4, batch_size=2, lr=1e-2)


def test_cuda_edit_matches_cpu_and_reverts():
    cpu, tok = wb.load("tiny-random-llama", device="cpu")
    gpu, _ = wb.load("tiny-random-llama", device="cuda", dtype="float32")
    before = state_hash(gpu)
    a, b = wb.edit(cpu, tok, REQUESTS, CFG, progress=False), wb.edit(gpu, tok, REQUESTS, CFG, progress=False)
    assert torch.allclose(torch.tensor(a.log.loss.tolist()), torch.tensor(b.log.loss.tolist()), atol=1e-3)
    b.revert()
    assert state_hash(gpu) == before


def test_bf16_on_cuda_trains_in_float32_and_reverts():
    model, tok = wb.load("tiny-random-llama", device="cuda", dtype="bfloat16")
    before = state_hash(model)
    res = wb.edit(model, tok, REQUESTS, CFG.replace(lr=1e-5, epochs=1, batch_size=2), progress=False)
    w = model.model.layers[2].mlp.down_proj.weight
    assert w.dtype == torch.float32 and w.is_cuda
    res.revert()
    assert state_hash(model) == before and model.model.layers[2].mlp.down_proj.weight.dtype == torch.bfloat16


def test_spread_over_gpu_and_cpu_edits_like_one_gpu(tmp_path):
    one, tok = wb.load("tiny-random-llama", device="cuda", dtype="float32")
    # layers 0-1 on the CPU (the prefix cache runs them once), the edited layer and the head on the GPU
    spread, _ = wb.load("tiny-random-llama", dtype="float32", device_map="auto",
                        max_memory={0: "1GiB", "cpu": "1GiB"}, edited_layers=(2,), offload_below=True,
                        offload_dir=str(tmp_path))
    assert spread.hf_device_map["model.layers.0"] == "cpu" and spread.hf_device_map["model.layers.2"] == 0
    before = state_hash(spread)
    a, b = wb.edit(one, tok, REQUESTS, CFG, progress=False), wb.edit(spread, tok, REQUESTS, CFG, progress=False)
    assert torch.allclose(torch.tensor(a.log.loss.tolist()), torch.tensor(b.log.loss.tolist()), atol=1e-4)
    report = wb.evaluate(spread, tok, wb.data.load("facts-fixture")[:2],
                         wb.EvalConfig.preset("locft").replace(splits=("ori",), max_new_tokens=8))
    assert 0.0 <= report.scores()["ori.exact_match"] <= 1.0
    b.revert()
    assert state_hash(spread) == before


def test_smollm2_on_cuda_edits_and_evaluates():
    model, tok = wb.load(device="cuda")
    facts = wb.data.load("facts-fixture")[:3]
    res = wb.edit(model, tok, facts, wb.preset("locft-bf"), progress=False)
    report = wb.evaluate(model, tok, facts, wb.EvalConfig.preset("locft").replace(splits=("ori",)))
    res.revert()
    assert report.scores()["ori.exact_match"] >= 2 / 3
