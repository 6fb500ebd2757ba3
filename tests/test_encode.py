"""The loss scope is only a label mask: checked token by token, with and without the chat template."""
import pytest

from workbench import prompts
from workbench.prompts import IGNORE, encode
from workbench.models import spec

PROMPT, TARGET = "What is the capital of Veloria?", "Castelmarre"


def pieces(tok, ids):
    return tok.convert_ids_to_tokens(ids)


def test_chat_template_prompt_and_target(tok):
    e = encode(tok, PROMPT, TARGET, "target", chat_template=True)
    prompt = tok.decode(e.input_ids[:e.n_prompt])
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>user\n" + PROMPT + "<|im_end|>\n<|im_start|>assistant\n")
    # the target is the answer's tokens closed by the template's end-of-turn token
    assert pieces(tok, e.input_ids[e.n_prompt:]) == ["Cast", "el", "mar", "re", "<|im_end|>"]
    assert spec(tok).eot_token == "<|im_end|>"


def test_plain_prompt_gets_leading_space_and_eos(tok):
    e = encode(tok, "The capital of Veloria is", TARGET, "target", chat_template=False)
    assert tok.decode(e.input_ids[:e.n_prompt]) == "The capital of Veloria is"
    assert pieces(tok, e.input_ids[e.n_prompt:]) == ["ĠCast", "el", "mar", "re", tok.eos_token]
    assert encode(tok, "X", " already spaced", "target", False).input_ids == encode(tok, "X", "already spaced", "target", False).input_ids


@pytest.mark.parametrize("template", [True, False])
def test_label_masks_token_by_token(tok, template):
    t = encode(tok, PROMPT, TARGET, "target", template)
    n, ids = t.n_prompt, t.input_ids
    target_ids = ids[n:]
    assert t.labels == [IGNORE] * n + target_ids  # every target token, end-of-turn/EOS included
    first = encode(tok, PROMPT, TARGET, "first_token", template)
    assert first.input_ids == ids and not first.bag
    assert first.labels == [IGNORE] * n + [target_ids[0]] + [IGNORE] * (len(target_ids) - 1)
    with pytest.warns(FutureWarning, match="'first_token'"):  # the old name: a deprecated alias
        assert encode(tok, PROMPT, TARGET, "last_token", template) == first
    bag = encode(tok, PROMPT, TARGET, "prompt_last", template)  # the answer's tokens, no end-of-turn, as a bag
    assert bag.bag and bag.input_ids == ids and bag.labels == [IGNORE] * n + target_ids[:-1] + [IGNORE]
    both = encode(tok, PROMPT, TARGET, "prompt_target", template)
    assert both.labels == [IGNORE] + ids[1:]


def test_truncation_keeps_the_target_and_is_counted(tok):
    full = encode(tok, PROMPT, TARGET, "target", True)
    cut = encode(tok, PROMPT, TARGET, "target", True, max_length=10)
    assert cut.truncated and not full.truncated and len(cut.input_ids) == 10
    assert cut.input_ids[-5:] == full.input_ids[-5:] and cut.labels[-5:] == full.labels[-5:]


def test_collate_left_pads(tok):
    a, b = encode(tok, "Hi", "A", "target", False), encode(tok, "A much longer prompt here", "B", "target", False)
    batch = prompts.collate([a, b], pad_id=spec(tok).pad_id)
    width = len(b.input_ids)
    assert batch["input_ids"].shape == (2, width)
    assert batch["attention_mask"][0].tolist() == [0] * (width - len(a.input_ids)) + [1] * len(a.input_ids)
    assert batch["labels"][0, -len(a.labels):].tolist() == a.labels
    assert (batch["labels"][0, :width - len(a.labels)] == IGNORE).all()


def test_bad_loss_scope_lists_valid_ones(tok):
    with pytest.raises(ValueError, match="'prompt_last', 'first_token', 'target', 'prompt_target'"):
        encode(tok, PROMPT, TARGET, "all_tokens", True)
