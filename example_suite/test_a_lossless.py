"""(a) Target-only vs speculative decoding with the canonical draft: equivalent on every task."""


def test_canonical_draft(tais_task, tais_equivalent):
    tais_equivalent(tais_task)
