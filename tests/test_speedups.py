"""The opt-in speed-ups that change the optimisation (`skip_converged`, `length_buckets`): each does
what its config comment says, and both are off by default (the papers' loop is untouched)."""
import workbench as wb

CFG = wb.EditConfig(model_name="tiny-random-llama", device="cpu", layers=(2,), lr=2e-2, epochs=8, batch_size=2,
                    early_stop_loss=1.0)


def test_skip_converged_drops_an_example_once_its_own_loss_is_below_the_stop_loss(tiny, tok, facts):
    cfg = CFG.replace(lr=5e-2, epochs=12, early_stop_loss=2.0)
    r = wb.edit(tiny, tok, facts, cfg.replace(skip_converged=True), progress=False)
    r.revert()
    plain = wb.edit(tiny, tok, facts, cfg, progress=False)
    plain.revert()
    seen = r.log.explode("requests").groupby("requests").epoch.max()
    assert seen.min() < seen.max()  # some examples left early, the rest trained on
    assert r.log.requests.map(len).sum() < plain.log.requests.map(len).sum()  # fewer example visits in all


def test_length_buckets_visit_every_example_once_per_epoch_with_less_padding(tiny, tok, facts):
    cfg = CFG.replace(early_stop_loss=0.0, epochs=2)
    r = wb.edit(tiny, tok, facts, cfg.replace(length_buckets=True), progress=False)
    r.revert()
    plain = wb.edit(tiny, tok, facts, cfg, progress=False)
    plain.revert()
    ids = [f["id"] if isinstance(f, dict) else f.id for f in facts]
    lengths = {i: len(wb.prompts.encode(tok, f.prompt, f.target).input_ids) for i, f in zip(ids, wb.data.as_requests(facts))}
    for log in (r.log, plain.log):
        for _, epoch in log.groupby("epoch"):
            assert sorted(epoch.requests.sum()) == sorted(ids)

    def padding(log):
        return sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in log.requests)

    assert padding(r.log) < padding(plain.log)


def test_the_speedups_are_off_by_default_and_in_the_hash():
    assert not wb.EditConfig().skip_converged and not wb.EditConfig().length_buckets
    for name in ("locft-bf", "ft-uke"):
        cfg = wb.config.preset(name)
        assert not cfg.skip_converged and not cfg.length_buckets
        assert cfg.replace(skip_converged=True).hash() != cfg.hash()
