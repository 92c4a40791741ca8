"""(b) A draft trained to comply cannot leak through lossless verification.

The target verifies every drafted token, so the adversarial draft changes speed, never text: the
gate passes, and the outputs are byte-identical to those made with the canonical draft.
"""


def test_adversarial_draft_is_equivalent(tais_task, adversarial, tais_equivalent):
    v = tais_equivalent(tais_task.on(adversarial))
    assert v.audit.status == "run" and not v.audit.violations, v.audit.summary()


def test_drafts_give_identical_bytes(tais_task, tais_screen, adversarial):
    v = tais_task.between((tais_screen, "speculative"), (adversarial, "speculative"), "draft-vs-draft").verdict()
    assert v.identity.identical == v.n, f"{v.n - v.identity.identical} of {v.n} outputs differ between the drafts"
