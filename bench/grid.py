"""The sweep's cells and the rules that skip some of them.

Defaults reproduce the seeds' matrix: concurrency 1, 2, 4 ... 2048 (12 values) x context
4, 8, 16 ... 16384 prompt tokens (13 values) = 156 cells (the seeds' "144/156-point matrix").
"Context" is the prompt length in tokens as the server counts it (chat template included for
the chat API), the quantity that fills the KV cache and sets prefill cost.

Skip rules, decided before or during the sweep and marked in every output:
- ``skipped_max_len``: prompt + output tokens exceed the server's max-model-len (the engine
  would answer 400, or silently cut the output).
- ``skipped_min_context``: shorter than the shortest prompt the API allows (the chat template
  alone is several tokens).
- ``skipped_after_failure``: an earlier cell at this context length failed (error or timeout
  rate above the threshold); higher concurrency would only fail harder, and cost time.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

DEFAULT_CONCURRENCY = tuple(2**k for k in range(12))  # 1 .. 2048
DEFAULT_CONTEXT = tuple(2**k for k in range(2, 15))  # 4 .. 16384


def int_list(text: str) -> list[int]:
    """A grid axis from the command line: ``1,2,4`` or a power-of-two range ``1..2048``."""
    text = text.strip()
    if ".." in text:
        lo, hi = (int(x) for x in text.split(".."))
        out, v = [], lo
        while v <= hi:
            out.append(v)
            v *= 2
        return out
    return [int(x) for x in text.split(",") if x.strip()]


QUICK_CONCURRENCY = (1, 8, 32)
QUICK_CONTEXT = (128, 1024)
QUICK_OUTPUT = 64

# Cell statuses.
PLANNED = "planned"
OK = "ok"
FAILED = "failed"
INTERRUPTED = "interrupted"
NOT_RUN = "not_run"
SKIPPED_MAX_LEN = "skipped_max_len"
SKIPPED_MIN_CONTEXT = "skipped_min_context"
SKIPPED_AFTER_FAILURE = "skipped_after_failure"
SKIPPED = frozenset({SKIPPED_MAX_LEN, SKIPPED_MIN_CONTEXT, SKIPPED_AFTER_FAILURE})


def requests_for(concurrency: int, multiplier: float = 5.0, minimum: int = 20) -> int:
    """Requests measured in a cell: max(minimum, multiplier x concurrency).

    Several rounds per stream, so the cell's steady state outweighs its ramp-up and drain.
    """
    return max(minimum, round(multiplier * concurrency))


@dataclass
class Cell:
    """One point of the matrix and what became of it."""

    context: int
    concurrency: int
    output: int
    requests: int
    warmup: int
    status: str = PLANNED
    reason: str = ""
    metrics: dict = field(default_factory=dict)

    @property
    def key(self) -> tuple[int, int]:
        return (self.context, self.concurrency)

    @property
    def runnable(self) -> bool:
        return self.status == PLANNED


@dataclass
class Grid:
    """Cells in run order: by context, then ascending concurrency (so skips can propagate)."""

    cells: list[Cell]

    @classmethod
    def plan(
        cls,
        contexts: list[int],
        concurrencies: list[int],
        output: int,
        max_model_len: int | None,
        min_context: int = 1,
        requests: int | None = None,
        multiplier: float = 5.0,
        minimum: int = 20,
        warmup: int = 2,
    ) -> Grid:
        """Every (context, concurrency) cell, with static skips applied."""
        cells = []
        for ctx in sorted(set(contexts)):
            for conc in sorted(set(concurrencies)):
                n = requests if requests is not None else requests_for(conc, multiplier, minimum)
                cell = Cell(ctx, conc, output, n, warmup)
                if max_model_len is not None and ctx + output > max_model_len:
                    cell.status = SKIPPED_MAX_LEN
                    cell.reason = f"{ctx} + {output} > max-model-len {max_model_len}"
                elif ctx < min_context:
                    cell.status = SKIPPED_MIN_CONTEXT
                    cell.reason = f"{ctx} < shortest possible prompt {min_context}"
                cells.append(cell)
        return cls(cells)

    def __iter__(self) -> Iterator[Cell]:
        return iter(self.cells)

    @property
    def contexts(self) -> list[int]:
        return sorted({c.context for c in self.cells})

    @property
    def concurrencies(self) -> list[int]:
        return sorted({c.concurrency for c in self.cells})

    def get(self, context: int, concurrency: int) -> Cell | None:
        return next((c for c in self.cells if c.key == (context, concurrency)), None)

    def record(self, cell: Cell, metrics: dict, max_error_rate: float) -> None:
        """Store a measured cell; a failure skips higher concurrencies at its context."""
        cell.metrics = metrics
        if metrics.get("error_rate", 0.0) > max_error_rate:
            cell.status = FAILED
            cell.reason = f"error+timeout rate {metrics['error_rate']:.1%} > {max_error_rate:.0%}"
            for other in self.cells:
                if (
                    other.context == cell.context
                    and other.concurrency > cell.concurrency
                    and other.runnable
                ):
                    other.status = SKIPPED_AFTER_FAILURE
                    other.reason = f"concurrency {cell.concurrency} failed at this context"
        else:
            cell.status = OK

    def finish(self) -> None:
        """Cells never reached (Ctrl-C) are marked not_run."""
        for cell in self.cells:
            if cell.runnable:
                cell.status = NOT_RUN
