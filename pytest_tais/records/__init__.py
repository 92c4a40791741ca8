"""Records: the generation type and the replay format (``generation``), and the generation store (``store``)."""
