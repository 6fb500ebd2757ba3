"""Model loading: the embedded model offline, the tiny model, and end-of-turn detection per family."""
import copy

import pytest

import workbench as wb
from workbench.generation import generate
from workbench.models import spec


def test_embedded_model_answers_paris_through_its_template(smol):
    model, tok = smol
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    assert tok.padding_side == "left" and spec(tok).eot_token == "<|im_end|>"
    answer = generate(model, tok, ["What is the capital of France?"], max_new_tokens=16)[0]
    assert "Paris" in answer


def test_tiny_model_is_deterministic_by_seed():
    a, _ = wb.load("tiny-random-llama", device="cpu", seed=1)
    b, _ = wb.load("tiny-random-llama", device="cpu", seed=1)
    c, _ = wb.load("tiny-random-llama", device="cpu", seed=2)
    pa, pb, pc = (next(m.parameters()) for m in (a, b, c))
    assert (pa == pb).all() and not (pa == pc).all()
    assert sum(p.numel() for p in a.parameters()) < 4_000_000


@pytest.mark.parametrize("template,eot", [
    # Llama-3 style: turns end with <|eot_id|>, EOS is another token
    ("{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] }}<|eot_id|>"
     "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}",
     "<|eot_id|>"),
    # Gemma style: <end_of_turn> then a newline
    ("{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}"
     "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}", "<end_of_turn>"),
])
def test_end_of_turn_comes_from_the_template(tok, template, eot):
    other = copy.deepcopy(tok)
    other.add_special_tokens({"additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                                                            "<start_of_turn>", "<end_of_turn>"]})
    other.chat_template = template
    s = spec(other)
    assert s.eot_token == eot and s.eot_id == other.convert_tokens_to_ids(eot) and s.eot_id != s.eos_id


def test_no_template_falls_back_to_eos(tok):
    plain = copy.deepcopy(tok)
    plain.chat_template = None
    assert spec(plain).eot_token == plain.eos_token and not spec(plain).has_chat_template


def test_unknown_dtype_lists_valid_ones():
    with pytest.raises(wb.ConfigError, match="dtype='int4'"):
        wb.load("tiny-random-llama", device="cpu", dtype="int4")


def test_the_fingerprint_does_not_depend_on_the_thread_count(tiny):
    """The thread policy changes torch's thread count while a process runs; the weights' identity
    (the key of the pre-edit and statistics caches) must not change with it."""
    import torch

    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = wb.models.fingerprint(tiny)
        torch.set_num_threads(max(2, n))
        assert wb.models.fingerprint(tiny) == one
    finally:
        torch.set_num_threads(n)
