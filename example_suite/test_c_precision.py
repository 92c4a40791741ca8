"""(c) float32 vs bfloat16, target-only: how many bytes change, and whether the rates move.

This is a measurement, not a tuned pass: the test records what the gate says (JUnit properties and
the tais table) and only asserts that the comparison could be computed and that the gate's decision
is consistent with its own interval.
"""


def test_float32_vs_bfloat16_target_only(tais_task, tais_screen, bf16):
    v = tais_task.between((tais_screen, "target"), (bf16, "target"), "precision").verdict()
    inside = -v.tost.margin < v.tost.ci_low and v.tost.ci_high < v.tost.margin
    assert v.tost.equivalent == inside
    print(
        f"{tais_task.name}: {v.identity.identical}/{v.n} byte-identical, changed bytes "
        f"{100 * v.identity.changed_bytes_share:.1f}%, D = {100 * v.diff:+.1f}pp -> {v.status}"
    )
