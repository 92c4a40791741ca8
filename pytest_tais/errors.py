"""Exceptions shared by the stages; importing this module is cheap."""


class TaskError(RuntimeError):
    """A task's verdict could not be computed. The screen reports it as an error, never a pass."""


#: A test that took a screened task (``tais_task``) and returned without asking for its verdict.
NEVER_ASKED = ("tais task {task!r} was screened but {nodeid} never asked for its verdict: call tais_equivalent(tais_task) "
               "(or tais_task.verdict()) in the test, or drop the tais_task fixture")
