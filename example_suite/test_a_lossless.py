"""(a) Target-only vs speculative decoding with the canonical draft: equivalent on every task."""


def test_canonical_draft(tais_task, tais_equivalent):
    v = tais_equivalent(tais_task)
    # Token by token, every speculative answer is the target's own greedy output.
    assert v.audit.status == "run" and not v.audit.violations, v.audit.summary()
