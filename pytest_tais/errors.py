"""Exceptions shared by the stages; importing this module is cheap."""


class TaskError(RuntimeError):
    """A task's verdict could not be computed. The screen reports it as an error, never a pass."""
