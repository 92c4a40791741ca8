"""Progress off a terminal: one plain line per arm at 25, 50, 75 and 100%, never a carriage return.

A CI log keeps every carriage-return update of a tqdm bar as text (one 120-prompt arm wrote about
120). The bar here is a tqdm subclass, so vLLM's engine loop (which reads ``format_dict``, sets
``postfix`` and calls ``update``/``refresh``/``close``) drives it as it drives tqdm, but everything
tqdm would write goes nowhere and ``display`` writes a line only when a new quarter is reached.
An arm's chunks each get a bar starting at the prompts done before, so a quarter is said once.
"""

from __future__ import annotations

import io
from typing import Any, TextIO

QUARTERS = 4


def line_bar(*, total: int, initial: int, desc: str, out: TextIO) -> Any:
    from tqdm import tqdm

    class LineBar(tqdm):
        def display(self, msg: Any = None, pos: Any = None) -> bool:
            total = self.total or 0
            quarter = QUARTERS * self.n // total if total else 0
            last = getattr(self, "_tais_quarter", None)
            self._tais_quarter = quarter if last is None else max(last, quarter)
            if last is not None and quarter > last:
                elapsed = self.format_dict.get("elapsed") or 0.0
                out.write(
                    f"{self.desc}: {self.n}/{total} prompts ({100 * self.n // total}%), {elapsed:.0f} s in this call\n"
                )
                out.flush()
            return True

        def clear(self, *args: Any, **kwargs: Any) -> None:
            pass

    # tqdm's own writes (its bar, the closing '\n' or '\r') go to a sink; ``display`` writes the lines.
    return LineBar(
        total=total,
        initial=initial,
        desc=desc,
        unit="prompt",
        file=io.StringIO(),
        mininterval=0,
        leave=False,
        dynamic_ncols=False,
        ncols=80,
    )
