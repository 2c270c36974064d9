"""What a trace's rows say about the trace itself, for the notes every command prints and puts in its JSON.

Two things are accepted but never silently: arrivals out of order (the commands sort them, stably, and say so) and
request ids that repeat (each row is still its own request; the ids are only carried into the outputs). Both are
counted as rows pass, batch by batch or all at once, with the same result either way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_ID_ROWS = 10_000_000  # ids kept to count repeats once they come out of order (8 bytes each)


@dataclass(frozen=True, slots=True)
class TraceNote:
    """One thing about a trace the user should know.

    Attributes:
        kind: machine-readable name: "unsorted_arrivals" or "repeated_request_ids".
        count: rows concerned (None when they could not be counted).
        message: one line for people.
    """

    kind: str
    count: int | None
    message: str

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return {"kind": self.kind, "count": self.count, "message": self.message}


class TraceChecks:
    """Counts out-of-order arrivals and repeated request ids over the rows fed in file order.

    An arrival is out of order when it is earlier than the row before. Repeated ids cost nothing while ids never
    decrease (a repeat is then an equal neighbour); once they decrease, the ids are kept (up to `max_id_rows`)
    and counted exactly at the end, or reported as not counted for a longer trace.
    """

    def __init__(self, max_id_rows: int = MAX_ID_ROWS) -> None:
        self.rows = 0
        self.unsorted_rows = 0
        self._last_arrival = -np.inf
        self._max_id_rows = max_id_rows
        self._last_id: int | None = None
        self._equal_ids = 0
        self._ids_in_order = True
        self._kept_ids: list[np.ndarray] | None = []

    def add(self, arrival_s: np.ndarray, request_id: np.ndarray | None = None) -> int | None:
        """Feed the next rows, in file order (after any rows are dropped).

        Args:
            arrival_s: arrival times, seconds.
            request_id: the rows' ids, or None when the source has none (ids are then row numbers: unique).

        Returns:
            The position among these rows of the first one arriving earlier than the row before, or None.
        """
        if len(arrival_s) == 0:
            return None
        late = np.flatnonzero(np.diff(arrival_s, prepend=self._last_arrival) < 0)
        self.unsorted_rows += len(late)
        self._last_arrival = float(arrival_s[-1])
        self.rows += len(arrival_s)
        if request_id is not None:
            self._add_ids(np.asarray(request_id, np.int64))
        return int(late[0]) if len(late) else None

    def _add_ids(self, ids: np.ndarray) -> None:
        if self._ids_in_order:
            before = ids[:-1] if self._last_id is None else np.concatenate(([self._last_id], ids[:-1]))
            after = ids[1:] if self._last_id is None else ids  # compared, not subtracted: ids may span all of int64
            if bool(np.all(after >= before)):
                self._equal_ids += int(np.count_nonzero(after == before))
            else:
                self._ids_in_order = False
            self._last_id = int(ids[-1])
        if self._kept_ids is not None:
            if self.rows > self._max_id_rows:
                self._kept_ids = None
            else:
                self._kept_ids.append(ids)

    @property
    def repeated_ids(self) -> int | None:
        """Rows whose id an earlier row already had (None: out of order in a trace too long to count)."""
        if self._ids_in_order:
            return self._equal_ids
        if self._kept_ids is None:
            return None
        ids = np.concatenate(self._kept_ids)
        return len(ids) - len(np.unique(ids))

    def notes(self, unsorted_action: str = "sorted by arrival time (rows arriving together keep their order)"
              ) -> tuple[TraceNote, ...]:
        """The notes to print: nothing when arrivals are in order and ids unique.

        Args:
            unsorted_action: what the command did about out-of-order arrivals, in words.

        Returns:
            Zero, one or two notes.
        """
        notes = []
        if self.unsorted_rows:
            verb = "arrives" if self.unsorted_rows == 1 else "arrive"
            notes.append(TraceNote("unsorted_arrivals", self.unsorted_rows,
                                   f"arrivals out of order: {self.unsorted_rows:,} of {self.rows:,} rows {verb} "
                                   f"earlier than the row before; {unsorted_action}"))
        repeated = self.repeated_ids
        if repeated is None:
            notes.append(TraceNote("repeated_request_ids", None,
                                   f"request ids are out of order in a trace of over {self._max_id_rows:,} rows: "
                                   "repeated ids were not counted"))
        elif repeated:
            rows = "1 row reuses" if repeated == 1 else f"{repeated:,} rows reuse"
            notes.append(TraceNote("repeated_request_ids", repeated,
                                   f"request ids repeat: {rows} the id of an earlier row; each row is still its own "
                                   "request"))
        return tuple(notes)
