"""Package-wide settings and the ``smoother`` logger.

``sm.settings.verbosity`` follows scanpy's scale (0 errors, 1 warnings, 2 info, 3 hints/debug);
``sm.settings.progress_bar`` switches tqdm bars on long work on (``True``), off (``False``) or, by default
(``None``), on only in interactive sessions (a terminal or a Jupyter kernel), so scripts, CI logs and batch jobs
stay quiet.
"""

from __future__ import annotations

import logging
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass

logger = logging.getLogger("smoother")
if not logger.handlers:
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(_handler)
logger.propagate = False

_LEVELS = {0: logging.ERROR, 1: logging.WARNING, 2: logging.INFO, 3: logging.DEBUG}


@dataclass
class _Settings:
    """Package-wide settings of smoother (``sm.settings``): logging verbosity, progress bars, showing plots.

    Change them once at the top of a script or notebook; every function reads them when it runs.

    Attributes
    ----------
    verbosity
        Logging level, scanpy's scale: 0 errors, 1 warnings (default), 2 info (each step, the keys it writes and
        its time), 3 debug. :meth:`verbosity_context` sets it for a block only.
    progress_bar
        Progress bars on long work: ``True`` always, ``False`` never, ``None`` (default) only in interactive
        sessions (a terminal or a Jupyter kernel), so scripts, CI logs and batch jobs stay quiet.
    autoshow
        What ``sm.pl.*(show=None)`` does: ``True`` (default) shows the figure and returns ``None``, as scanpy;
        ``False`` returns the Axes / Figure.

    Examples
    --------
    >>> import smoother as sm
    >>> old = sm.settings.verbosity
    >>> sm.settings.verbosity = 2  # info: log every step and what it writes
    >>> sm.settings.verbosity
    2
    >>> with sm.settings.verbosity_context(0):  # errors only, inside the block
    ...     print(sm.settings.verbosity)
    0
    >>> sm.settings.verbosity = old
    >>> old = sm.settings.progress_bar
    >>> sm.settings.progress_bar = False  # no progress bars, even in a notebook
    >>> sm.settings.progress_bar = old  # None (the default): only in interactive sessions
    """

    _verbosity: int = 1
    progress_bar: bool | None = None
    autoshow: bool = True  # sm.pl.*(show=None): call plt.show() and return None, as scanpy does

    @property
    def verbosity(self) -> int:
        """Logging verbosity: 0 errors, 1 warnings (default), 2 info, 3 debug."""
        return self._verbosity

    @verbosity.setter
    def verbosity(self, value: int) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value not in _LEVELS:
            msg = f"Expected `verbosity` to be one of {sorted(_LEVELS)}, found `{value!r}`."
            raise ValueError(msg)
        self._verbosity = value
        logger.setLevel(_LEVELS[value])

    @contextmanager
    def verbosity_context(self, value: int):
        """Temporarily set the verbosity."""
        old = self.verbosity
        self.verbosity = value
        try:
            yield
        finally:
            self.verbosity = old


settings = _Settings()
logger.setLevel(_LEVELS[settings.verbosity])


def _interactive() -> bool:
    """A terminal on stderr or a Jupyter/IPython kernel."""
    if "ipykernel" in sys.modules:
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # closed or replaced stream
        return False


def progress_enabled() -> bool:
    """Whether long work shows a progress bar (``sm.settings.progress_bar``; ``None``: only when interactive)."""
    if settings.progress_bar is None:
        return _interactive()
    return bool(settings.progress_bar)


def progress(iterable=None, *, total=None, desc=None, disable=None, **kwargs):
    """A tqdm progress bar that respects ``sm.settings.progress_bar`` (and ``disable=`` when given)."""
    from tqdm.auto import tqdm

    if disable is None:
        disable = not progress_enabled()
    return tqdm(iterable, total=total, desc=desc, disable=disable, leave=False, **kwargs)


def log_start(msg: str) -> float:
    """Log the start of a step at info level and return the start time."""
    logger.info(msg)
    return time.perf_counter()


def log_finish(start: float, added: list[str] | None = None) -> None:
    """Log the end of a step with its elapsed time and the AnnData fields it added."""
    for field in added or []:
        logger.info("    added %s", field)
    logger.info("    finished (%.2fs)", time.perf_counter() - start)
