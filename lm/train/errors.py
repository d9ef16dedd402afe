"""Why a run stopped on its own: the message names what happened, what was kept and the fix.
Launchers print it as one line and exit with code 2."""
from __future__ import annotations


class RunStopped(RuntimeError):
    """Training stopped and cannot usefully continue by itself (it kept diverging after its
    rollbacks, or a checkpoint could not be written); the last good checkpoint is intact."""
