"""The mechanism figures: each drawn from the real tokenizer and the tiny model, with what it shows
checked (which tokens carry loss, where the end-of-turn token is, which matrices are selected, where
an edit acts), and none of them changing the model."""
import torch

import workbench as wb
from workbench import mechanism, prompts

PROMPT, TARGET = "Who designed the Tarnwick Bridge?", "Ilse Marchetti"


def _colours(fig, row):
    return list(fig.data[row].marker.color)


def test_loss_tokens_colour_exactly_the_labelled_tokens(tok):
    fig = mechanism.loss_tokens(tok, PROMPT, TARGET)
    assert [t.name for t in fig.data] == list(wb.config.LOSS_SCOPES)
    for trace, scope in zip(fig.data, wb.config.LOSS_SCOPES):
        e = prompts.encode(tok, PROMPT, TARGET, scope, True)
        shown = list(range(e.n_prompt - 10, len(e.input_ids)))  # a short answer: the prompt's tail and all of it
        assert list(trace.text)[1:] == [mechanism._pieces(tok, e.input_ids)[i] for i in shown] and trace.text[0] == "…"
        loss = mechanism._BAG if scope == "prompt_last" else mechanism._ON
        assert [c == loss for c in trace.marker.color[1:]] == [e.labels[i] != prompts.IGNORE for i in shown]
    first = fig.data[list(wb.config.LOSS_SCOPES).index("first_token")]
    assert sum(c == mechanism._ON for c in first.marker.color) == 1


def test_loss_tokens_show_the_position_that_scores_each_token(tok):
    """FT-L's defining difference: prompt_last scores every target token from the last prompt
    position (one dark box, every labelled box orange), target from the position before each."""
    fig = mechanism.loss_tokens(tok, PROMPT, TARGET, ("prompt_last", "target"))
    bag, own = fig.data
    e = prompts.encode(tok, PROMPT, TARGET, "prompt_last", True)
    last = 10 - 1 + 1  # the shown boxes: "…", the last 10 prompt tokens, the target
    assert list(bag.marker.color).count(mechanism._SRC) == 1 and bag.marker.color[last] == mechanism._SRC
    assert all(f"scored from position {e.n_prompt - 1} " in h for h, c in zip(bag.hovertext, bag.marker.color)
               if c == mechanism._BAG)
    assert mechanism._SRC not in own.marker.color and mechanism._BAG not in own.marker.color
    t = prompts.encode(tok, PROMPT, TARGET, "target", True)
    n = len(t.input_ids)
    scored = [h for h, c in zip(own.hovertext, own.marker.color) if c == mechanism._ON]
    assert scored == [f"{i}: {mechanism._pieces(tok, t.input_ids)[i]}, scored from position {i - 1} "
                      f"({mechanism._pieces(tok, t.input_ids)[i - 1]})" for i in range(n) if t.labels[i] != prompts.IGNORE]


def test_template_tokens_mark_the_end_of_turn_only_with_the_template(tok):
    fig = mechanism.template_tokens(tok, PROMPT, TARGET)
    with_t, without = fig.data
    assert with_t.name == "chat template" and len(with_t.text) > len(without.text)
    assert _colours(fig, 0).count(mechanism._EOT) == 1 and _colours(fig, 0)[-1] == mechanism._EOT
    plain = prompts.encode(tok, PROMPT, TARGET, "target", False)
    assert (mechanism._EOT in _colours(fig, 1)) == (wb.models.spec(tok).eot_id in plain.input_ids[plain.n_prompt:])


def test_decoder_stack_highlights_the_selected_matrices(tiny):
    fig = mechanism.decoder_stack(tiny, ("down", "q"), (2,))
    z, names = fig.data[0].z, list(fig.data[0].x)
    on = {(layer, names[j]) for layer, row in enumerate(z) for j, v in enumerate(row) if v}
    assert on == {(2, "down"), (2, "q")}
    n = tiny.model.layers[2].mlp.down_proj.weight.numel() + tiny.model.layers[2].self_attn.q_proj.weight.numel()
    assert f"{n:,} of" in fig.layout.title.text
    mlp = mechanism.decoder_stack(tiny, ("mlp",), (1,)).data[0]
    assert sum(map(sum, mlp.z)) == 3  # gate, up, down of layer 1


def test_layer_effect_shows_no_update_below_the_edit_and_leaves_the_model_as_it_was(tiny, tok, facts):
    cfg = wb.EditConfig(model_name="tiny-random-llama", layers=(2,), lr=5e-2, steps_per_edit=10, schedule="depth_first")
    res = wb.edit(tiny, tok, facts[:1], cfg, progress=False)
    edited = wb.models.state_hash(tiny)
    fig = mechanism.layer_effect(tiny, tok, res, facts[0]["prompt"] if isinstance(facts[0], dict) else facts[0].prompt)
    assert wb.models.state_hash(tiny) == edited
    update, shift = fig.data[0].y, fig.data[1].y
    assert update[2] > 0 and all(u == 0 for i, u in enumerate(update) if i != 2)
    assert all(s < 1e-6 for s in shift[:2]) and shift[2] > 1e-4  # nothing moves below the edited layer
    res.revert()


def test_schedule_draws_who_trained_when(tiny, tok, facts):
    df = wb.edit(tiny, tok, facts[:4], wb.EditConfig(model_name="tiny-random-llama", layers=(2,), schedule="depth_first",
                                                    steps_per_edit=3, early_stop_loss=0.0), progress=False)
    df.revert()
    fig = mechanism.schedule(df)
    grid = torch.tensor(fig.data[0].z)
    assert grid.shape == (4, 12) and (grid.sum(0) == 1).all()  # one request per step, depth-first
    assert (grid[0, :3] == 1).all() and (grid[1, 3:6] == 1).all()  # each to the end before the next
    first = fig.data[2]  # request 1's own loss: measured only during its own 3 steps, depth-first
    assert first.name.startswith("request") and list(first.x) == [0, 1, 2]


def test_chunks_one_line_per_chunk():
    import pandas as pd
    stages = pd.DataFrame({"n_edits": [2, 4], "chunk1.ori.exact_match": [1.0, 0.5], "chunk2.ori.exact_match": [None, 1.0]})
    fig = mechanism.chunks(stages)
    assert [t.name for t in fig.data] == ["chunk1", "chunk2"] and list(fig.data[0].y) == [1.0, 0.5]
