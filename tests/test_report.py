"""The second edition of the reproduction report: verdicts by rule, numbers only from the store."""
import json
from pathlib import Path

import pytest
from scipy import stats

import workbench as wb
from workbench.runs import campaign, cost, report
from workbench.runs.verdicts import Paired, paired, verdict


def test_the_committed_report_is_what_the_claims_and_the_store_render():
    assert report.REPORT.read_text() == report.render(), "run `workbench report` and commit docs/REPRODUCTION.md"


@pytest.mark.parametrize("diffs, direction, expected", [
    ([0.10, 0.20, 0.15], "higher", "reproduced"),
    ([-0.10, -0.20, -0.15], "higher", "not reproduced"),
    ([-0.10, -0.20, -0.15], "lower", "reproduced"),
    ([0.10, -0.10, 0.05], "higher", "inconclusive"),  # the interval holds zero
    ([0.30], "higher", "inconclusive"),  # one seed: no interval
])
def test_verdicts_follow_the_rules_on_the_paired_t_interval(diffs, direction, expected):
    import pandas as pd

    rows = [{"arm": "a", "seed": s, "m": 0.5 + d} for s, d in enumerate(diffs)] + \
           [{"arm": "b", "seed": s, "m": 0.5} for s in range(len(diffs))] + [{"arm": "b", "seed": 99, "m": 0.0}]
    p = paired(pd.DataFrame(rows), "arm", "a", "b", "m")
    assert p.n == len(diffs) and p.mean == pytest.approx(sum(diffs) / len(diffs))  # seed 99 has no pair
    if len(diffs) > 1:
        lo, hi = stats.ttest_1samp(diffs, 0).confidence_interval(0.95)
        assert (p.lo, p.hi) == (pytest.approx(lo), pytest.approx(hi))
    assert verdict(p, direction) == expected


@pytest.mark.parametrize("diffs, expected", [
    ([-0.010, -0.012, -0.008], "reproduced"),  # surely worse, but by less than the margin: no loss
    ([-0.050, -0.052, -0.048], "not reproduced"),  # surely worse by more than the margin
    ([-0.010, -0.060, 0.040], "inconclusive"),  # the interval reaches past -margin
    ([0.050, 0.060, 0.055], "reproduced"),  # better is no loss either
])
def test_a_claim_of_no_loss_is_judged_against_its_margin(diffs, expected):
    import pandas as pd

    rows = [{"arm": "a", "seed": s, "m": 0.5 + d} for s, d in enumerate(diffs)] + \
           [{"arm": "b", "seed": s, "m": 0.5} for s in range(len(diffs))]
    p = paired(pd.DataFrame(rows), "arm", "a", "b", "m")
    assert verdict(p, "higher", margin=0.02) == expected
    mirrored = Paired(p.n, -p.mean, p.half, tuple(-d for d in p.diffs))  # "lower is better": the same claim
    assert verdict(mirrored, "lower", margin=0.02) == expected
    if expected == "reproduced" and p.mean < 0:
        assert verdict(p, "higher") == "not reproduced"  # the difference rule would call the same data a loss
    with pytest.raises(ValueError, match="margin"):
        verdict(p, "higher", margin=-0.02)


def test_claims_are_run_into_the_store_and_rendered_from_it(tmp_path, monkeypatch):
    """Two arms x two seeds of real tiny-model runs, single runs and sequences, executed from a claims
    file: the report's tables hold the stored numbers and each verdict is the rule applied to the
    stored per-seed differences."""
    monkeypatch.setenv("WORKBENCH_RESULTS", str(tmp_path / "store"))
    base = wb.runs.RunSpec(edit=wb.EditConfig(model_name="tiny-random-llama", device="cpu", components=("down",),
                                              layers=(2,), batch_size=2), benchmark="facts-fixture", n_edits=2,
                           max_new_tokens=6, eval="locft", splits=("ori", "para"))
    points = [{"label": "long", "epochs": 40, "lr": 1e-2}, {"label": "short", "epochs": 1, "lr": 1e-4}]
    claim = {"paper": "P", "says": "it does", "base": base.to_dict(), "points": points, "arm": "long",
             "others": ["short"], "score": ["ori.exact_match", "para.exact_match"], "direction": "higher"}
    seq_base = base.replace(capability=("mmlu",), n_mmlu=4)
    claims = {"title": "t", "intro": "i", "todo": ["later"], "claims": {
        "once": {**claim, "title": "longer training edits better", "experiment": "exp", "seeds": [0, 1],
                 "metrics": ["ori.exact_match"], "paper_arms": {"long": "90 % Rel."}},
        "seq": {**claim, "title": "and in sequences", "experiment": "seq", "seeds": [0, 1], "chunk_size": 1,
                "base": seq_base.to_dict(), "before": True},
        # the same runs, read as a claim of no loss against each sequence's unedited start (stage 0)
        "kept": {**claim, "title": "capability kept", "experiment": "seq", "seeds": [0, 1], "chunk_size": 1,
                 "base": seq_base.to_dict(), "before": True, "others": ["long before"],
                 "score": ["capability.mmlu_acc"], "margin": 0.25}}}
    path = tmp_path / "claims.yaml"
    path.write_text(json.dumps(claims))  # JSON is YAML
    campaign.run(["once", "seq"], "serial", path, progress=False, root=tmp_path / "store")
    once, seq, kept = report.read(path).claims
    for claim, stored in ((once, wb.runs.load("exp")), (seq, None)):
        df = report.stored_runs(report.table(claim, tmp_path / "store"))
        assert len(df) == 4 and set(df.label) == {"long", "short"}
        if stored is not None:
            assert sorted(df["ori.exact_match"]) == sorted(stored["ori.exact_match"])
        p = paired(df, "label", "long", "short", "score")
        assert p.n == 2
        md = report.render(path, tmp_path / "store")
        assert f"| {claim.title} | it does | vs short: {report._diff(p)} | **{verdict(p, 'higher')}** |" in md
    assert "| arm | paper | seeds | ori.exact_match | score |" in md  # the paper's number beside ours
    assert "| long | 90 % Rel. | 2 | " in md and "| short | – | 2 | " in md
    assert "4 of 4 stored" in md and "- later" in md and "Still to run" not in md and "computed: 4 on cpu, float32" in md
    df = report.table(kept, tmp_path / "store")  # each sequence's stage 0 is an arm "<label> before"
    assert list(df.label) == ["long", "long before"] * 2 + ["short", "short before"] * 2 and "short before |" in md
    p = paired(df, "label", "long", "long before", "score")
    firsts = {s: [json.loads(x) for x in (Path(f) / "stages.jsonl").read_text().splitlines()]
              for s, f in zip(df.seed[df.label == "long"], df.folder[df.label == "long"])}
    assert p.diffs == tuple(pytest.approx(st[-1]["capability.mmlu_acc"] - st[0]["capability.mmlu_acc"])
                            for st in firsts.values()) and firsts[0][0]["n_edits"] == 0
    assert f"| capability kept | it does | vs long before: {report._diff(p)} | **{verdict(p, 'higher', 0.25)}** |" in md
    mean_first = (firsts[0][0]["capability.mmlu_acc"] + firsts[1][0]["capability.mmlu_acc"]) / 2
    assert f"| long | capability.mmlu_acc | {report._num(mean_first)} |" in md  # every stage, from stages.jsonl
    env = Path(df["folder"].iloc[0]) / "env.json"  # one run computed in bf16, as dtype "auto" is on a GPU
    env.write_text(json.dumps({**json.loads(env.read_text()), "dtype": "bfloat16"}))
    with pytest.raises(wb.ConfigError, match="seq: its stored runs computed in bfloat16, float32, and on this machine "
                                             "dtype='auto' is float32"):
        campaign.run(["seq"], "serial", path, progress=False, root=tmp_path / "store")
    fig = report.figure(once, report.table(once, tmp_path / "store"))  # the bars the report's figure draws
    assert list(fig.data[0].x) == ["long", "short"] and fig.data[-1].name == "score"
    fig = report.figure(kept, df)  # a sequence's: the score and capability over the edits so far, one line per arm
    lines = {t.name: t for t in fig.data}
    mmlu = "capability: MMLU acc."
    assert set(lines) == {"long: score", "short: score", f"long: {mmlu}", f"short: {mmlu}"}, set(lines)
    assert list(lines[f"long: {mmlu}"].x) == [0, 1, 2] and lines[f"long: {mmlu}"].y[0] == pytest.approx(mean_first)
    claims["claims"]["once"]["seeds"] = [0, 1, 2]  # a seed not run yet is counted as missing
    path.write_text(json.dumps(claims))
    md = report.render(path, tmp_path / "store")
    once = report.table(next(c for c in report.read(path).claims if c.name == "once"), tmp_path / "store")
    assert (f"4 of 6 runs stored; arms still short of 3 seed(s): `long`; `short`. At its stored runs' mean of "
            f"{once.run_s.mean() / 3600:.2f} h, roughly {2 * once.run_s.mean() / 3600:.1f} h more") in md
    assert "Still to run: 2 runs, roughly" in md and "have no stored run" not in md
    for name in ("seq", "kept"):  # the two claims read the same sequences: their missing runs count once
        claims["claims"][name]["seeds"] = [0, 1, 2]
    path.write_text(json.dumps(claims))
    assert "Still to run: 4 runs, roughly" in report.render(path, tmp_path / "store")


def test_runs_no_stored_run_of_their_claim_can_time_are_priced_by_their_editing_alone():
    zsre, long_form = ("ft", "batch", False), ("ft", "single", True)
    rates = {"f1": (zsre, 30.0), "f2": (zsre, 90.0), "f3": (zsre, 36.0), "f4": (long_form, 1e6)}
    owed = {"a": (None, zsre, 100), "b": (None, ("lora", "batch", False), 5), "c": (7200.0, zsre, 10)}
    line = cost.owed_line(owed, rates)  # "a": 100 edits x the median 36 s; "b": no stored lora run prices it
    assert "Still to run: 3 runs. 1 of them belong to claims or calibrations with stored runs: roughly 2 h" in line
    assert "comes to roughly 1 h for the 1 of them" in line and "the other 1 have no stored run of their method" in line
    assert cost.merge({"a": (None, zsre, 100)}, {"a": (60.0, zsre, 100)})["a"][0] == 60.0  # timed where either can
    assert cost.merge({"a": (60.0, zsre, 100)}, {"a": (None, zsre, 100)})["a"][0] == 60.0


def test_a_bad_claims_file_names_the_claim_and_the_field(tmp_path):
    path = tmp_path / "claims.yaml"
    path.write_text("claims:\n  c: {title: t, paper: p, says: s, experiment: e, base: {}, points: [], seeds: [0], "
                    "arm: a, others: [], score: [m], direction: up}\n")
    with pytest.raises(wb.ConfigError, match="claim 'c': direction='up'"):
        report.read(path)
    path.write_text(path.read_text().replace("direction: up", "direction: higher, colour: red"))
    with pytest.raises(wb.ConfigError, match=r"claim 'c' has unknown field\(s\) \['colour'\]"):
        report.read(path)
    path.write_text(path.read_text().replace("colour: red", "margin: -0.02"))
    with pytest.raises(wb.ConfigError, match=r"claim 'c': margin=-0.02, give a non-negative number"):
        report.read(path)
    path.write_text(path.read_text().replace("margin: -0.02", "paper_arms: {b: 3 %}")
                    .replace("points: []", "points: [{label: a}]"))  # a quote for an arm the claim does not have
    with pytest.raises(wb.ConfigError, match=r"claim 'c': paper_arms='b' is not valid; choose one of: 'a'"):
        report.read(path)
    path.write_text(path.read_text().replace("paper_arms: {b: 3 %}", "score_every: 5"))
    with pytest.raises(wb.ConfigError, match=r"claim 'c': score_every=5, give a whole number of chunks, 1 or more, "
                                             r"and only with chunk_size"):
        report.read(path)
    path.write_text(path.read_text().replace("score_every: 5", "unedited: a, magnitude: ori.rouge"))
    with pytest.raises(wb.ConfigError, match=r"claim 'c': magnitude='ori.rouge' is not valid; choose one of: 'm'"):
        report.read(path)


def test_a_calibration_chooses_by_its_rule_before_the_claim_that_uses_it_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_RESULTS", str(tmp_path / "store"))
    base = {"edit": {"model_name": "tiny-random-llama", "device": "cpu", "components": ["down"], "layers": [2],
                     "batch_size": 2, "epochs": 30}, "benchmark": "facts-fixture", "n_edits": 2, "max_new_tokens": 6,
            "eval": "locft", "splits": ["ori"]}
    score = ["ori.exact_match", "ori.token_acc"]
    plan = {"calibrations": {"lr": {"title": "lr", "experiment": "cal", "base": {**base, "offset": 6}, "preset": "ft-m",
                                    "grid": {"lr": [1e-5, 1e-2], "layers": [[2]]}, "seeds": [0], "score": score}},
            "claims": {"c": {"title": "tuned beats untuned", "paper": "P", "says": "s", "experiment": "exp", "base": base,
                             "points": [{"label": "tuned", "calibrated": "lr"}, {"label": "untuned", "lr": 1e-6}],
                             "seeds": [0, 1], "arm": "tuned", "others": ["untuned"], "score": score,
                             "direction": "higher"}}}
    path = tmp_path / "claims.yaml"
    path.write_text(json.dumps(plan))
    assert "waiting for the calibration of lr" in report.render(path, tmp_path / "store")
    with pytest.raises(wb.ConfigError, match="calibration 'lr' is not finished"):
        wb.runs.calibrated("lr", path, tmp_path / "store")
    campaign.run(["c"], "serial", path, progress=False, root=tmp_path / "store")  # runs the calibration first
    p = report.read(path)
    cal, claim = p.calibrations[0], p.claims[0]
    df = report.table(cal, tmp_path / "store")
    best = df.sort_values("score", ascending=False, kind="stable")["label"].iloc[0]  # the rule, applied by hand
    lr = float(best.split(",")[0].split("=")[1])
    assert p.chosen(tmp_path / "store")["lr"] == {"preset": "ft-m", "lr": lr, "layers": [2]}
    assert wb.runs.calibrated("lr", path, tmp_path / "store") == {"preset": "ft-m", "lr": lr, "layers": [2]}
    with pytest.raises(wb.ConfigError, match="calibration='nope' is not valid; choose one of: 'lr'"):
        wb.runs.calibrated("nope", path, tmp_path / "store")
    runs = dict(((label, s), spec) for label, s, spec in claim.runs(p.chosen(tmp_path / "store")))
    assert runs[("tuned", 1)].edit.lr == lr and runs[("tuned", 1)].offset == 2
    assert len(report.table(claim, tmp_path / "store", p.chosen(tmp_path / "store"))) == 4
    md = report.render(path, tmp_path / "store")
    assert f"chosen: **{best}**" in md and f"| **{best}** (chosen) | 1 |" in md


def test_a_bar_chart_of_many_metrics_gives_each_its_own_colour():
    """The report's claim 1 shows 12 bars per arm: the template's 10 colours would paint two alike."""
    import pandas as pd

    from workbench import plots

    df = pd.DataFrame({"label": ["a", "b"], **{f"m{i}": [0.1 * i, 0.2] for i in range(12)}})
    fig = plots.bars(df, "label", [f"m{i}" for i in range(12)])
    colours = fig.layout.colorway or fig.layout.template.layout.colorway
    assert len(set(colours[:len(fig.data)])) == len(fig.data) == 12
    assert plots.bars(df, "label", ["m0", "m1"]).layout.colorway is None  # few metrics: the template's own


def test_the_summary_marks_a_verdict_provisional_while_an_other_arm_has_no_paired_seed():
    claim = next(c for c in report.read().claims if c.direction == "higher")
    strong = Paired(3, 0.10, 0.02, (0.09, 0.10, 0.11))  # the smallest lead: the strongest rival
    weak = Paired(3, 0.40, 0.02, (0.39, 0.40, 0.41))
    comps = [("weak", weak, verdict(weak, "higher")), ("strong", strong, verdict(strong, "higher"))]
    ours, judged = report.summary_cells(claim, comps)
    assert ours.startswith("vs strong: +0.100") and judged == "**reproduced**"
    ours, judged = report.summary_cells(claim, comps + [("unrun", Paired(0, float("nan"), float("nan"), ()), "inconclusive")])
    assert ours.endswith("not yet paired: unrun") and judged == "**reproduced** (so far: 2 of 3 others)"
    assert report.summary_cells(claim, []) == ("no runs stored yet", "**inconclusive** (not run yet)")
    unpaired = [("unrun", Paired(0, float("nan"), float("nan"), ()), "inconclusive")]
    assert report.summary_cells(claim, unpaired, stored=4) == (  # runs there, none of them a pair yet
        f"no seed of `{claim.arm}` paired with another arm yet (4 runs stored)", "**inconclusive** (no pair yet)")


def test_with_no_rival_above_the_unedited_model_the_summary_still_shows_the_lead_it_did_not_count():
    claim = next(c for c in report.read().claims if c.direction == "higher" and c.unedited)
    rival, floor = Paired(3, 0.30, 0.1, (0.2, 0.3, 0.4)), Paired(2, 0.33, 1.4, (0.31, 0.35))
    ours, judged = report.summary_cells(claim, [("rival", rival, report.BELOW_FLOOR), ("unedited", floor, report.FLOOR)])
    assert ours.startswith("vs rival (not counted): +0.300") and "not above the unedited model, not counted: rival" in ours
    assert judged == "**inconclusive** (no rival beats the unedited model)"


def test_where_the_score_means_nothing_for_the_unedited_model_the_lead_is_shown_on_the_claims_magnitude_metric():
    import dataclasses

    import pandas as pd

    claim = next(c for c in report.read().claims if c.magnitude)  # scored on steps to converge
    rows = [{"label": lab, "seed": s, "score": steps, claim.magnitude: ori}
            for s in (0, 1) for lab, steps, ori in [(claim.arm, 2.0 + s, 0.9), (claim.others[0], 5.0, 0.8),
                                                    (claim.unedited, float("nan"), 0.3 + 0.1 * s)]]
    df = pd.DataFrame(rows)
    *rivals, (name, lead, v) = report.comparisons(claim, df)
    assert v == report.FLOOR and name == f"{claim.unedited} (`{claim.magnitude}`)"
    assert lead.n == 2 and lead.mean == pytest.approx(0.55)  # 0.9 - 0.3, 0.9 - 0.4
    ours, _ = report.summary_cells(claim, [*rivals, (name, lead, v)])
    assert f"{claim.arm} − unedited (`{claim.magnitude}`): +0.550" in ours
    # without the field the lead is on the score, which the unedited arm lacks: no pair, said so
    plain = report.comparisons(dataclasses.replace(claim, magnitude=None), df)[-1]
    assert plain[1].n == 0
    assert report.summary_cells(claim, [*rivals, plain])[0].endswith("unedited arm: no seed paired yet")


def test_the_budget_pays_in_its_order_and_names_what_it_cannot_decide(tmp_path):
    import pandas as pd

    owed = pd.DataFrame([{"entry": "a", "owed": "now", "seconds": 2 * 3600.0},
                         {"entry": "b", "owed": "now", "seconds": 20 * 3600.0},
                         {"entry": "c", "owed": "now", "seconds": float("nan")},
                         {"entry": "d", "owed": "now", "seconds": 3600.0},
                         {"entry": "d", "owed": "if undecided", "seconds": 50 * 3600.0}])  # extra seeds: not owed now
    paid, beyond, left, _ = report.budget_split({"cpu_hours": 4, "order": ["a", "b", "c", "d"]}, owed)
    assert paid == {"a": "2.00 h", "d": "1.00 h"} and left == pytest.approx(1.0)
    assert beyond == {"b": "20.00 h", "c": "0.00 h, 1 runs unpriced"}  # an unpriced run cannot be paid for either
    assert report.budget_split(None, owed) == ({}, {}, 0.0, {})
    # a verdict before a figure: a's figure-only point waits until d's judged run is paid, then takes what is left
    figure = pd.concat([owed.assign(judged=True), pd.DataFrame([{"entry": "a", "owed": "now", "seconds": 0.5 * 3600,
                                                                "judged": False}])], ignore_index=True)
    paid, beyond, left, figures = report.budget_split({"cpu_hours": 3.2, "order": ["a", "d"]}, figure)
    assert paid == {"a": "2.00 h", "d": "1.00 h"} and figures == {} and left == pytest.approx(0.2)
    paid, beyond, left, figures = report.budget_split({"cpu_hours": 4, "order": ["a", "d"]}, figure)
    assert figures == {"a": "0.50 h"} and left == pytest.approx(0.5)
    # while a verdict is unpaid (b), no figure is bought: what is left is the seed rule's
    paid, beyond, left, figures = report.budget_split({"cpu_hours": 4, "order": ["a", "b", "d"]}, figure)
    assert beyond == {"b": "20.00 h"} and figures == {} and left == pytest.approx(1.0)
    # what the runs stored since the budget was set took is paid first (their run_s, found through runs.log)
    for name, when, run_s in [("old", "2026-01-01T00:00:00", 7200.0), ("new", "2026-02-01T00:00:00", 3600.0)]:
        (tmp_path / "exp" / name).mkdir(parents=True)
        (tmp_path / "exp" / name / "metrics.json").write_text(json.dumps({"run_s": run_s}))
        with open(tmp_path / "exp" / "runs.log", "a") as log:
            log.write(f"{when} host 1 {name}\n")
    assert cost.spent_since(tmp_path, "2026-01-15") == (1, 1.0)
    paid, beyond, left, _ = report.budget_split({"cpu_hours": 4, "since": "2026-01-15", "order": ["a", "d"]}, owed,
                                                cost.spent_since(tmp_path, "2026-01-15")[1])
    assert paid == {"a": "2.00 h", "d": "1.00 h"} and left == pytest.approx(0.0)


def test_a_runs_price_is_written_before_it_runs_and_read_beside_what_it_took(tmp_path):
    """`cost.record` writes each owed run's price once (a campaign started again keeps the first price);
    `priced_since` pairs it with the run's recorded wall time once the run is stored."""
    import pandas as pd

    row = dict.fromkeys(cost.PLAN_COLUMNS, "")
    owed = pd.DataFrame([{**row, "seconds": 1800.0, "priced by": "its arm's stored runs", "folder": str(tmp_path / "exp" / "a")},
                         {**row, "seconds": 900.0, "priced by": "runs of its kind", "folder": str(tmp_path / "exp" / "b")},
                         {**row, "seconds": float("nan"), "folder": str(tmp_path / "exp" / "c")},  # unpriced
                         {**row, "seconds": 60.0, "folder": ""}])  # waits for a calibration: no folder yet
    assert cost.record(owed, tmp_path) == 2
    assert cost.record(owed.iloc[:2].assign(seconds=5.0), tmp_path) == 0  # priced once, before it ran
    assert cost.priced_since(tmp_path, "2026-01-01") == (0, 0.0, 0.0)  # nothing stored yet
    (tmp_path / "exp" / "a").mkdir()
    (tmp_path / "exp" / "a" / "metrics.json").write_text(json.dumps({"run_s": 3600.0}))
    (tmp_path / "exp" / "runs.log").write_text("2026-02-01T00:00:00 host 1 a\n")
    assert cost.priced_since(tmp_path, "2026-01-01") == (1, 0.5, 1.0)
    assert cost.priced_since(tmp_path, "2026-03-01") == (0, 0.0, 0.0)


def test_the_seeds_the_rule_adds_run_only_the_arms_the_verdict_reads():
    claim = next(c for c in report.read().claims if c.name == "layer_capability")
    chosen = report.read().chosen(report.STORE)
    listed = {(label, seed) for label, seed, _ in claim.runs(chosen)}
    more = claim.with_seeds([*claim.seeds, max(claim.seeds) + 1])
    added = {(label, seed) for label, seed, _ in more.runs(chosen)} - listed
    assert {label for label, _ in added} == claim.judged() == {"layer 25", "layer 5", "unedited"}
    assert {label for label, _ in listed} > claim.judged()  # the figure's layers 10, 15, 20 keep the listed seeds


def test_a_campaign_runs_a_later_claims_free_runs_before_waiting_on_one_another_holds(tmp_path, monkeypatch):
    """Two campaigns over overlapping claims: while another worker holds claim a's run, this one runs
    claim b's first and waits on a's only after (here until the holder's heartbeat is stale)."""
    from workbench.runs import locks

    monkeypatch.setenv("WORKBENCH_RESULTS", str(tmp_path / "store"))
    base = {"edit": {"model_name": "tiny-random-llama", "device": "cpu", "layers": [2], "epochs": 2},
            "benchmark": "facts-fixture", "n_edits": 2, "max_new_tokens": 4, "eval": "locft", "splits": ["ori"]}
    claim = {"paper": "P", "says": "s", "experiment": "exp", "base": base, "seeds": [0], "arm": "x", "others": ["y"],
             "score": ["ori.exact_match"], "direction": "higher"}
    plan = {"claims": {"a": {**claim, "title": "a", "points": [{"label": "x", "lr": 1e-3}, {"label": "y", "lr": 1e-4}]},
                       "b": {**claim, "title": "b", "points": [{"label": "x", "lr": 1e-3}, {"label": "y", "lr": 2e-4}]}}}
    path = tmp_path / "claims.yaml"
    path.write_text(json.dumps(plan))
    a, b = report.read(path).claims
    folders = {label: a.folder(tmp_path / "store", spec) for label, _, spec in a.runs()}
    folders["b"] = next(b.folder(tmp_path / "store", spec) for label, _, spec in b.runs() if label == "y")
    folders["x"].parent.mkdir(parents=True)
    locks.lock_path(folders["x"]).write_text(json.dumps({"host": "elsewhere", "pid": 1}))  # a live holder
    campaign.run(["a", "b"], "serial", path, progress=False, root=tmp_path / "store", stale_s=5)
    log = [line.split()[-1] for line in (tmp_path / "store" / "exp" / "runs.log").read_text().splitlines()]
    assert log == [folders["y"].name, folders["b"].name, folders["x"].name]  # a's held run last, b's shared one once


def test_plan_prices_every_owed_run_before_anything_runs():
    """`workbench report --plan`: one row per run the claims file still owes (a run two claims share once),
    none of them in the store, each priced from stored runs where any of its kind exist; the seed rule's
    extra seeds apart ("if undecided"); the text has a total row."""
    claims_file = report.read()
    df = cost.plan(claims_file, report.STORE)
    now = df[df["owed"] == "now"]
    ledger, chosen = cost.Ledger(), claims_file.chosen(report.STORE)
    for item in [*claims_file.calibrations, *claims_file.claims]:
        ledger.add(item, report.table(item, report.STORE, chosen), report.STORE, chosen)
    keys = {r.entry + r.arm + str(r.seed) for r in now.itertuples()}
    assert len(now) >= len(ledger.owed)  # every run the report's "Still to run" counts, and the seeds the rule asks for
    assert not any((Path(str(k)) / "metrics.json").exists() for k in ledger.owed)
    assert len(keys) == len(now)
    priced = df["seconds"].dropna()
    assert len(priced) and (priced > 0).all()
    extra = df[df["owed"] == "if undecided"]
    assert set(extra["entry"]) <= {c.name for c in claims_file.claims if c.seeds_max}
    text = cost.plan_text(df)
    assert "| **total** |" in text and f"| **total** | {len(now)} |" in text


def test_an_arm_no_named_claim_has_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(wb.ConfigError, match=r"arm='tempalte' is not valid; choose one of: 'no template', 'template', 'unedited'"):
        report.run(["chat_template"], arms=["tempalte"], root=tmp_path, progress=False)
    assert not any(tmp_path.iterdir())  # nothing ran, nothing written
