"""The judges live in :mod:`pytest_tais.pairs.judges`; this name stays importable for user code."""

from .pairs.judges import *  # noqa: F401,F403


def __getattr__(name: str):
    from .pairs import judges

    return getattr(judges, name)
