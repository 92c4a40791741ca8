"""Exceptions shared by the stages, and how names are shown in messages; importing this module is cheap."""


class TaskError(RuntimeError):
    """A task's verdict could not be computed. The screen reports it as an error, never a pass."""


def printable(text: str) -> str:
    """``text`` with control characters (ANSI escapes, NUL, BEL, newlines) escaped, for terminals and ids."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


#: A test that took a screened task (``tais_task``) and returned without asking for its verdict.
NEVER_ASKED = (
    "tais task {task!r} was screened but {nodeid} never asked for its verdict: call tais_equivalent(tais_task) "
    "(or tais_task.verdict()) in the test, or drop the tais_task fixture"
)


class BatteryError(ValueError):
    """A battery source is missing or malformed. The message names the input and the fix."""
