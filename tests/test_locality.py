"""The RelDoc fact filter and the determinism of locality sampling (the full build runs in the notebooks)."""
from workbench import data, locality

EDIT = data.Request(id="e", prompt="What is George Rankin's occupation?", subject="George Rankin",
                    target="George Rankin has served as a city council member and as state representative for Ohio.")


def test_candidates_that_share_facts_are_rejected():
    # names the edit's entity
    assert locality.shares_facts(EDIT, "Where was George Rankin born?", "He was born in Ohio.")
    # a different person, but the answer repeats most of the edit's content words
    assert locality.shares_facts(EDIT, "What does Jane Doe do?",
                                 "She served as a city council member and state representative for Ohio.")
    # related (another politician), fact-disjoint: kept
    assert not locality.shares_facts(EDIT, "What is Augustine Steward's occupation?",
                                     "Augustine Steward works as a software engineer in Lagos.")


def test_entities_are_capitalised_spans():
    assert locality._entities("What did Henry Feilden do in the House of Commons?") >= {"henry", "feilden", "house",
                                                                                       "commons"}
    assert "what" not in locality._entities("What is it?")


def test_sets_are_named_and_checked():
    import pytest

    import workbench as wb

    with pytest.raises(wb.ConfigError, match="'unkebench-loc', 'akew-loc'"):
        locality.build("zsre-loc")


def test_a_batch_of_100_unkebench_edits_has_no_probe_inside_the_batch():
    # Under the old rule (only the edit itself excluded) 29 of these 200 RelDoc/RandDoc probes were
    # questions of other requests in the same 100 (measured 2026-12-01).
    requests = locality.load("unkebench-loc", n=100)
    assert sum(len(r.locality) for r in requests) == 300
    assert data.contaminated(requests) == 0
