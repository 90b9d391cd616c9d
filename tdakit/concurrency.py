"""One lock for heavy torch work started from more than one thread.

The explorers compute on background threads while a notebook may call the same objects from the main thread.
torch.func transforms are not safe to interleave across threads (forward-mode AD levels, used by jvp and the
dense Hessian, are process-wide and must be exited in the order they were entered), so ``WhatIf`` and
``Spectrum`` run their scoring, curvature fitting and retraining under ``compute_lock``. It is re-entrant:
a locked method may call another.
"""

from __future__ import annotations

import threading

compute_lock = threading.RLock()

__all__ = ["compute_lock"]
