"""Other toolkits' formats: EasyEdit and LocFT hparams in, EasyEdit results and Hugging Face folders out."""
import json
import warnings

import pytest
import torch

import workbench as wb
from workbench.config import EditConfig
from workbench.errors import ConfigError

# files in the layouts of EasyEdit's hparams/FT/*.yaml, hparams/LoRA/*.yaml and ICT-STAR/LocFT's hparams/*.yaml
EASYEDIT_FT = """alg_name: "FT"
model_name: "./hugging_cache/Qwen2.5-7B-Instruct"
device: 0
layers: [27]
num_steps: 25
batch_size: 1
max_length: 40
lr: 5e-4
weight_decay: 0
kl_factor: 0
norm_constraint: false
objective_optimization: "prompt_last"
rewrite_module_tmp: "model.layers.{}.mlp.down_proj.weight"
layer_module_tmp: "model.layers.{}"
mlp_module_tmp: "model.layers.{}.mlp"
attn_module_tmp: "model.layers.{}.self_attn"
ln_f_module: "model.norm"
lm_head_module: "lm_head"
model_parallel: false
"""
EASYEDIT_ADALORA = """alg_name: "LoRA"
model_name: "./hugging_cache/llama-2-7b"
device: 1
lora_type: "adalora"
layers: []
num_steps: 70
batch_size: 1
max_length: 30
lr: 5e-3
weight_decay: 0
kl_factor: 0
rank: 8
lora_alpha: 32
lora_dropout: 0.1
norm_constraint: false
target_modules: ["q_proj", "v_proj"]
model_parallel: false
fp16: true
"""
LOCFT = """model_name_or_path: "mistralai/Mistral-7B-v0.1"
data_path: "./data/zsre/zsre_3k.json"
save_model_dir: "./saves/mistral_zsre3k"

layer: 23
rewrite_module: "model.layers.{}"

lr: 5.0e-5
batch_size: 100
num_steps: 25
device: 0
"""


def test_easyedit_ft_hparams(tmp_path):
    path = tmp_path / "qwen2.5-7b.yaml"
    path.write_text(EASYEDIT_FT)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every field of this file has a counterpart
        cfg = EditConfig.from_easyedit(path)
    assert (cfg.method, cfg.layers, cfg.components, cfg.loss_scope) == ("ft", (27,), ("down",), "prompt_last")
    assert (cfg.steps_per_edit, cfg.lr, cfg.max_length, cfg.schedule, cfg.device) == (25, 5e-4, 40, "depth_first", "cuda:0")
    assert cfg.chat_template is False and cfg.norm_constraint == 0
    ftm = tmp_path / "ftm.yaml"
    ftm.write_text(EASYEDIT_FT.replace("prompt_last", "target_new").replace("norm_constraint: false",
                                                                          "norm_constraint: 5e-4"))
    m = EditConfig.from_easyedit(ftm, model_name="tiny-random-llama")
    assert m.loss_scope == "target" and m.norm_constraint == 5e-4 and m.model_name == "tiny-random-llama"


def test_easyedit_adalora_names_what_it_cannot_map(tmp_path):
    path = tmp_path / "adalora.yaml"
    path.write_text(EASYEDIT_ADALORA)
    with pytest.warns(UserWarning, match=r"not used: fp16=True"):
        cfg = EditConfig.from_easyedit(path)
    assert (cfg.method, cfg.layers, cfg.components, cfg.lora_rank, cfg.lora_alpha) == ("adalora", "all", ("q", "v"), 8, 32)
    assert cfg.steps_per_edit == 70 and cfg.lr == 5e-3 and cfg.device == "cuda:1"
    bad = tmp_path / "rome.yaml"
    bad.write_text("alg_name: ROME\n")
    with pytest.raises(ConfigError, match=r"rome.yaml: alg_name='ROME'; supported"):
        EditConfig.from_easyedit(bad)


def test_locft_hparams(tmp_path):
    path = tmp_path / "mistral-7b.yaml"
    path.write_text(LOCFT)
    with pytest.warns(UserWarning, match=r"data_path=.*save_model_dir"):
        cfg = EditConfig.from_locft(path)
    assert cfg == wb.preset("locft-bf-mistral-7b").replace(device="cuda:0")  # the official recipe, as our preset
    path.write_text(LOCFT.replace("rewrite_module: \"model.layers.{}\"", "rewrite_module: \"model.layers.{}.foo\""))
    with pytest.raises(ConfigError, match="cannot map module"):
        EditConfig.from_locft(path)


REQUESTS = [{"prompt": "The capital of Zorbia is", "target": "Quxville"},
            {"prompt": "Alice Lindqvist works as a", "target": "lighthouse keeper"}]


@pytest.mark.parametrize("method,dtype", [("ft", "float32"), ("ft", "bfloat16"), ("lora", "float32")])
def test_save_pretrained_writes_a_loadable_edited_model(tmp_path, method, dtype):
    from transformers import AutoModelForCausalLM

    model, tok = wb.load("tiny-random-llama", device="cpu", dtype=dtype)
    cfg = wb.EditConfig(model_name="tiny-random-llama", method=method, layers=(2,),
                        components=("down",) if method == "ft" else ("q", "v"), epochs=6, batch_size=2, lr=5e-2)
    res = wb.edit(model, tok, REQUESTS, cfg, progress=False)
    ids = tok("The capital of Zorbia is", return_tensors="pt").input_ids
    with torch.no_grad():
        edited = model(input_ids=ids).logits.float()
    w_edited = model.model.layers[2].mlp.down_proj.weight.detach().clone()
    folder = res.save_pretrained(tmp_path / "edited", tok)
    res.revert()
    loaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        again, original = loaded(input_ids=ids).logits.float(), model(input_ids=ids).logits.float()
    assert loaded.model.layers[2].mlp.down_proj.weight.dtype == getattr(torch, dtype)  # saved in the model's dtype
    assert not any("lora" in n for n, _ in loaded.named_parameters())  # adapters merged
    if dtype == "bfloat16":  # trained in float32 (weights.float32_master), saved rounded to bf16
        assert torch.equal(loaded.model.layers[2].mlp.down_proj.weight, w_edited.to(torch.bfloat16))
        assert (again - original).abs().max() > 0
    else:
        assert (again - edited).abs().max() < 1e-4 < (again - original).abs().max()
    card = (folder / "README.md").read_text()
    assert f"method `{method}`" in card and '"lr": 0.05' in card
    assert '"The capital of Zorbia is" -> "Quxville"' in card and "chat template" in card  # the facts and their format
    assert (folder / "tokenizer.json").exists() and not list(tmp_path.glob("*.part"))  # no temporary folder left
    reloaded, _ = wb.load(str(folder), device="cpu")
    assert wb.models.revision(reloaded).startswith("folder-sha256:")  # a local folder's provenance: its files' hash


def test_export_easyedit_layout(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_RESULTS", str(tmp_path / "results"))
    tiny = wb.EditConfig(model_name="tiny-random-llama", device="cpu", layers=(2,), lr=1e-2, epochs=30, batch_size=3)
    spec = wb.runs.RunSpec(edit=tiny, benchmark="facts-fixture", n_edits=3, max_new_tokens=8, eval="locft")
    wb.runs.execute(spec, "exp")
    out = wb.runs.export_easyedit(wb.runs.run_folder(spec, "exp"), tmp_path / "easyedit.json")
    records = json.loads(out.read_text())
    facts = wb.data.load("facts-fixture")[:3]
    assert [r["case_id"] for r in records] == [0, 1, 2]
    assert [r["requested_rewrite"]["target_new"] for r in records] == [f.target for f in facts]
    for r in records:
        assert set(r) >= {"case_id", "requested_rewrite", "time", "pre", "post"}
        assert r["post"]["rewrite_acc"] == r["post"]["workbench"]["ori"]["token_acc"]
        assert len(r["post"]["rephrase_acc"]) == len(r["post"]["workbench"]["para"]["token_acc"]) >= 1
        assert 0 <= r["post"]["rewrite_acc"][0] <= 1 and "loc" in r["post"]["workbench"]
    with pytest.raises(wb.WorkbenchError, match="per_probe.jsonl"):
        wb.runs.export_easyedit(tmp_path, tmp_path / "x.json")


def test_lm_eval_capability_is_lm_eval_mmlu_on_the_in_memory_model(tiny, tok):
    """lm-eval's letter-choice MMLU on our 570 items equals the same scoring done by hand (the
    log-likelihood of " A".." D" after the lettered question), and goes through EvalConfig."""
    n = 12
    cfg = wb.EvalConfig(splits=(), metrics=(), capability=("lm_eval:workbench_mmlu", "mmlu"), n_mmlu=n)
    cap = wb.evaluate(tiny, tok, [], cfg).capability
    items = [json.loads(line) for line in open(wb.data.find("mmlu-probe"))][:n]
    right = 0
    for it in items:
        context = it["question"].strip() + "".join(f"\n{L}. {c}" for L, c in zip("ABCD", it["choices"])) + "\nAnswer:"
        ctx = tok(context, add_special_tokens=False).input_ids
        scores = []
        for letter in "ABCD":
            whole = tok(context + " " + letter, add_special_tokens=False).input_ids
            with torch.no_grad():
                logp = torch.log_softmax(tiny(input_ids=torch.tensor([whole])).logits[0].float(), -1)
            scores.append(sum(logp[i - 1, whole[i]].item() for i in range(len(ctx), len(whole))))
        right += scores.index(max(scores)) == it["answer"]
    assert cap["lm_eval_workbench_mmlu_acc"] == pytest.approx(right / n)
    assert 0 <= cap["mmlu_acc"] <= 1  # our cloze probe on the same items, side by side
    with pytest.raises(ConfigError, match="lm_eval:<task>"):
        wb.EvalConfig(capability=("lm-eval",))
