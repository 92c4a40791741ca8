"""Pairs: the pair type (``record``), matching two arms' answers and judging them (``pairing``, ``judges``)."""
