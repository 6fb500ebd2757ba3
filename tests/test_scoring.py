"""Scoring as the papers score: loss scopes by hand, AdaLoRA as the baseline runs it, float32 trained
weights on a bf16 model, locality probes that are never another edit, the UnKE lineage's metrics."""
import random

import pytest
import torch
import torch.nn.functional as F

import workbench as wb
from workbench import data, locality, metrics, prompts, scoring
from workbench.prompts import IGNORE, encode
from workbench.models import spec, state_hash
from workbench.methods.ft import example_losses

PAIRS = [("What is the capital of Veloria?", "Castelmarre, a port city."), ("Who wrote it?", "Ana Ruiz")]


# ------------------------------------------------------------------------------- loss scopes
def by_hand(model, tok, prompt, target, scope, template):
    """The loss of one unpadded example, written out from its definition (no label masks)."""
    p = prompts.prompt_ids(tok, prompt, template)
    t = prompts.target_ids(tok, target, template)
    ids = torch.tensor([p + t])
    logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)  # [T, V]; row i predicts token i+1
    n = len(p)
    if scope == "prompt_last":  # EasyEdit FT-L: every answer token from the last prompt position
        return -logp[n - 1, t[:-1]].mean()
    if scope == "first_token":
        return -logp[n - 1, t[0]]
    if scope == "target":
        return -torch.stack([logp[n - 1 + j, tok_id] for j, tok_id in enumerate(t)]).mean()
    seq = p + t  # prompt_target: every token after the first
    return -torch.stack([logp[i - 1, seq[i]] for i in range(1, len(seq))]).mean()


@pytest.mark.parametrize("template", [True, False])
@pytest.mark.parametrize("scope", ["prompt_last", "first_token", "target", "prompt_target"])
def test_each_loss_scope_matches_its_definition(tiny, tok, scope, template):
    examples = [encode(tok, p, t, scope, template) for p, t in PAIRS]
    batch = prompts.collate(examples, spec(tok).pad_id)  # left-padded: the two differ in length
    with torch.no_grad():
        got = example_losses(tiny, batch)
        want = torch.stack([by_hand(tiny, tok, p, t, scope, template) for p, t in PAIRS])
    assert torch.allclose(got, want, atol=1e-5), (got, want)


def test_the_bag_loss_is_not_the_first_token_loss(tiny, tok):
    # the two readings of "last token" differ: FT-L's bag scores 6 answer tokens, not one
    bag, first = (prompts.collate([encode(tok, *PAIRS[0], s, False)], spec(tok).pad_id) for s in ("prompt_last", "first_token"))
    with torch.no_grad():
        assert abs(example_losses(tiny, bag).item() - example_losses(tiny, first).item()) > 1e-3


# ----------------------------------------------------------------------------------- AdaLoRA
def test_adalora_regulariser_equals_peft_and_no_rank_is_pruned(tiny, tok, facts):
    from workbench.methods.adapters import attach_adapter
    from workbench.components import resolve

    cfg = wb.preset("adalora-uke", layers=(1, 2))
    assert cfg.early_stop_loss == 0 and cfg.adalora_schedule == ()
    handle = attach_adapter(tiny, resolve(tiny, cfg.components, cfg.layers), cfg, total_steps=70)
    try:
        for p in handle.parameters().values():  # move A and B off their init so the term is not trivial
            p.data.add_(0.05 * torch.randn_like(p))
        b = prompts.collate([encode(tok, facts[0].prompt, facts[0].target, "target", True)], spec(tok).pad_id)
        with torch.no_grad():
            # AdaLoraModel.forward: where peft adds the term (EasyEdit reaches it through task_type CAUSAL_LM)
            out = handle.peft_model.base_model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                                               labels=b["labels"])
            plain = F.cross_entropy(out.logits[0, :-1].float(), b["labels"][0, 1:], ignore_index=IGNORE)
            ours = handle.regularizer()
        assert ours.item() > 1e-3
        assert torch.allclose(out.loss - plain, ours, atol=1e-5)  # peft adds exactly this to its loss
    finally:
        handle.unload()


def test_adalora_preset_runs_its_fixed_budget_and_keeps_its_ranks(tiny, tok, facts):
    cfg = wb.preset("adalora-uke", layers=(1, 2), steps_per_edit=6)
    r = wb.edit(tiny, tok, facts[:1], cfg, progress=False)
    try:
        assert r.steps == 6 and not r.log.skipped.any()  # no early stop, no skip
        ranks = {m.r[m.active_adapters[0]] for m in r.adapter.peft_model.modules() if hasattr(m, "ranknum")}
        assert ranks == {12}  # init_r = 1.5 x 8, never pruned
    finally:
        r.revert()


def test_adalora_schedule_is_explicit(tiny, tok, facts):
    with pytest.raises(wb.ConfigError, match="tinit, tfinal, deltaT"):
        wb.EditConfig(method="adalora", adalora_schedule=(1, 2))
    cfg = wb.EditConfig(method="adalora", components=("q",), layers=(1,), adalora_schedule=(5, 5, 1), steps_per_edit=4,
                        schedule="depth_first")
    with pytest.raises(wb.ConfigError, match="below the 4 planned steps"):
        wb.edit(tiny, tok, facts[:1], cfg, progress=False)


# --------------------------------------------------------------------------------- precision
def test_bf16_model_keeps_an_update_of_1e5_in_float32_and_reverts(tiny, tok, facts):
    model = tiny.to(torch.bfloat16)
    before = state_hash(model)
    weight = model.model.layers[2].mlp.down_proj.weight
    original = weight.detach().clone()
    # Adam's first step moves every weight by lr: 1e-5, far below bf16's resolution at these magnitudes
    cfg = wb.EditConfig(components=("down",), layers=(2,), lr=1e-5, steps_per_edit=1, early_stop_loss=0.0,
                        schedule="depth_first", chat_template=False)
    r = wb.edit(model, tok, facts[:1], cfg, progress=False)
    w = model.model.layers[2].mlp.down_proj.weight
    assert w.dtype == torch.float32
    delta = (w.detach() - original.float()).abs()
    moved = delta[delta > 0]
    assert moved.numel() > 0.9 * delta.numel() and torch.allclose(moved, torch.full_like(moved, 1e-5), rtol=0.05)
    # the same update applied to the bf16 weight itself would have been rounded away almost everywhere
    assert ((w.detach().to(torch.bfloat16) == original).float().mean() > 0.9)
    # the edited model still runs in bf16 around the float32 module, and evaluates
    ids = torch.tensor([encode(tok, "Hello", "there", "target", False).input_ids])
    assert model(input_ids=ids).logits.dtype == torch.bfloat16
    r.revert()
    assert model.model.layers[2].mlp.down_proj.weight.dtype == torch.bfloat16
    assert state_hash(model) == before
    assert not model.model.layers[2].mlp.down_proj._forward_hooks and not model.model.layers[2].mlp.down_proj._forward_pre_hooks


# ---------------------------------------------------------------------------------- locality
def _req(i, bench="unkebench"):
    return data.Request(id=str(i), prompt=f"what about item{i}?", target=f"value{i}",  # no shared facts
                        source={"benchmark": bench})


def test_locality_never_draws_a_probe_from_the_edit_set():
    pool = [_req(i) for i in range(300)]
    batch = pool[:100]  # the edit set; its members rank highest for every edit
    excluded = set(range(100))
    triples = [(data.QA("q", "a"), "StructTrip:zsre")]
    for req in batch[:10]:
        order = list(range(300))
        items = locality.choose(req, order, pool, excluded, random.Random(0), triples, 2, 2, 1)
        probes = {x["question"] for x in items if x["kind"] != "StructTrip"}
        assert len(probes) == 4 and not probes & {r.prompt for r in batch}
    # excluding only the edit itself (the old rule) puts other edits of the batch in its locality
    items = locality.choose(batch[0], list(range(300)), pool, {0}, random.Random(0), triples, 2, 2, 1)
    leaked = [x for x in items if x["question"] in {r.prompt for r in batch}]
    assert leaked
    with_locality = [data.Request(id=r.id, prompt=r.prompt, target=r.target,
                                  locality=(data.QA(batch[1].prompt, "x"),)) for r in batch[:2]]
    assert data.contaminated(with_locality) == 2  # what evaluate() warns about and records


def test_evaluate_warns_and_records_locality_leaks(tiny, tok):
    a = data.Request(id="a", prompt="Who is A?", target="A is x.", locality=(data.QA("Who is B?", "-"),))
    b = data.Request(id="b", prompt="Who is B?", target="B is y.")
    cfg = wb.EvalConfig(metrics=("exact_match",), max_new_tokens=2)
    pre = wb.pre_edit(tiny, tok, [a, b], cfg, cache=False)
    with pytest.warns(UserWarning, match="1 locality probe"):
        report = wb.evaluate(tiny, tok, [a, b], cfg, pre=pre)
    assert report.provenance["loc_probes_in_edit_set"] == 1


# ------------------------------------------------------------------------------ the lineage's metrics
def test_rouge_recall_is_the_rouge_packages_recall_with_the_lineages_guards():
    from rouge import Rouge

    pred, ref = "the cat sat on a mat today", "the cat sat on the mat"
    s = Rouge().get_scores(pred, ref)[0]
    got = metrics.rouge_recall([pred, "", "word"], [ref, "a reference", "word and more"])
    assert got[0] == {"rouge1": s["rouge-1"]["r"], "rouge2": s["rouge-2"]["r"], "rougeL": s["rouge-l"]["r"]}
    assert got[1] == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}  # the package refuses an empty prediction
    assert got[2]["rouge1"] == pytest.approx(1 / 3)  # a one-word prediction gets a space, as EasyEdit does


def test_sentence_cosine_is_the_sentence_transformers_cosine():
    from sentence_transformers import util

    preds = ["Paris is the capital of France.", "I like green tea.", ""]
    refs = ["The capital of France is Paris.", "The stock market fell sharply.", "Something."]
    got = metrics.sentence_cosine(preds, refs)
    enc = metrics.sentence_encoder()
    want = util.cos_sim(enc.encode(preds, convert_to_tensor=True), enc.encode(refs, convert_to_tensor=True)).diagonal()
    assert got == pytest.approx(want.tolist(), abs=1e-5)
    assert got[0] > 0.8 > 0.3 > got[1]  # a paraphrase is close, an unrelated sentence is not
    assert metrics.sentence_cosine(["same text"], ["same text"])[0] == pytest.approx(1.0, abs=1e-5)


def test_sub_questions_are_averaged_per_request_first():
    import pandas as pd

    from workbench.evaluation import protocols_for, summarize

    table = pd.DataFrame({"request": ["a", "a", "a", "b"], "split": ["sub"] * 4, "kind": [""] * 4,
                          "rougeL_recall": [1.0, 1.0, 1.0, 0.0]})
    s = summarize(table, protocols_for(wb.EvalConfig()))
    assert s.value.iloc[0] == pytest.approx(0.5)  # (1 + 0) / 2, not 3 / 4


def test_uke_table_puts_the_lineage_first_and_labels_ours(tiny, tok, facts):
    cfg = wb.EvalConfig(splits=("ori", "para"), max_new_tokens=4)
    table = wb.evaluate(tiny, tok, facts[:2], cfg).uke_table()
    assert list(table.index) == ["Ori", "Para"]
    assert list(table.columns)[:2] == ["BERT Score (cosine)", "ROUGE-L (recall)"]
    assert {"ours: BERTScore F1", "ours: ROUGE-L F1"} <= set(table.columns)


# ------------------------------------------------------------------------------- capability
def one_pass_per_pair(model, tok, prompt, continuation, template):
    """The mean log-probability of a continuation from one unpadded pass over prompt + continuation."""
    p = prompts.prompt_ids(tok, prompt, template)
    c = prompts.target_ids(tok, continuation, template)[:-1]  # the closing EOS is not scored
    logp = torch.log_softmax(model(input_ids=torch.tensor([p + c])).logits[0].float(), -1)
    return torch.stack([logp[len(p) - 1 + j, t] for j, t in enumerate(c)]).mean().item()


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma", "gpt2"])
def test_choices_scored_against_their_shared_prompt_equal_one_pass_per_pair(tok, family):
    """`mean_logprobs` runs a prompt shared by several continuations once and its continuations
    against its cache: the same numbers as a pass per pair, for prompts of different lengths (left
    padding), continuations of different lengths (right padding) and of one token, in every family
    (Qwen2 with a sliding window shorter than the rows)."""
    from transformers import AutoModelForCausalLM, GemmaConfig, GPT2Config, LlamaConfig, Qwen2Config

    small = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    config = {"llama": lambda: LlamaConfig(**small),
              "qwen2": lambda: Qwen2Config(**small, use_sliding_window=True, sliding_window=6, max_window_layers=1),
              "gemma": lambda: GemmaConfig(**small, head_dim=8),
              "gpt2": lambda: GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=3, n_head=4, n_positions=128)}[family]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config()).eval()
    questions = ["What is the boiling point of water at sea level in degrees?", "Pick one.",
                 "Which planet is known as the red planet of the solar system, seen from Earth?"]
    choices = ["100", "It boils at ninety-nine and a half degrees", "Mars", "B"]
    ps = [q for q in questions for _ in choices] + ["Pick one."]  # a repeated pair, apart from its group
    cs = choices * len(questions) + ["Mars"]
    for template in (False, True):
        got = scoring.mean_logprobs(model, tok, ps, cs, chat_template=template, batch_size=2)
        want = [one_pass_per_pair(model, tok, p, c, template) for p, c in zip(ps, cs)]
        assert got == pytest.approx(want, abs=1e-5)
