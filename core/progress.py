"""Progress of a long job followed from the command line (`--wait`): a live bar on a terminal, plain lines elsewhere.

A tqdm bar redrawn every second is right in a terminal but floods captured output (CI logs, `| tee`, cron mail)
with carriage-return frames. Captured output gets one plain line each time the job moves on instead.
"""

from __future__ import annotations

from tqdm import tqdm


class ProgressLine:
    """Follows one job: call `show(done, total, status)` as often as you like; `close()` at the end."""

    def __init__(self, stream, *, desc: str, position: int = 0) -> None:
        self.stream = stream
        self.desc = desc
        isatty = getattr(stream, "isatty", None)
        self.bar = (
            tqdm(desc=desc, file=stream, position=position, leave=True, dynamic_ncols=True)
            if callable(isatty) and isatty()
            else None
        )
        self._last: tuple | None = None

    def show(self, done: int, total: int, status: str = "", details: dict[str, str] | None = None) -> None:
        total = max(total, 1)
        details = details or {}
        if self.bar is not None:
            self.bar.total, self.bar.n = total, done
            self.bar.set_postfix({"status": status, **details} if status else details, refresh=False)
            self.bar.refresh()
            return
        state = (done, total, status)
        if state == self._last:
            return
        self._last = state
        extra = "".join(f" {key}={value}" for key, value in details.items())
        self.stream.write(
            f"{self.desc}: {done}/{total} ({100 * done // total}%) {status}{extra}".rstrip() + "\n"
        )
        if hasattr(self.stream, "flush"):
            self.stream.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
