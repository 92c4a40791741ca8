"""Records: the generation type and the replay format (``generation``), the generation store (``store``), and hub snapshots of models and datasets (``hub``)."""
