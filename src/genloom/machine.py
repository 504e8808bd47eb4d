"""What a measurement ran on: CPU count, torch threads and the load averages at that moment, so a
result file says whether its figures were taken on a quiet machine."""

from __future__ import annotations

import os
import platform
from typing import Any

import torch


def machine() -> dict[str, Any]:
    """{"cpus", "torch_threads", "loadavg" (1, 5, 15 min), "loaded", "python", "torch"}.

    `loaded` is True when the 1- or 5-minute load average is above the CPU count: other work
    shared the machine, so timings and time-budgeted training are not those of a quiet machine.
    """
    cpus = os.cpu_count() or 1
    load = [round(x, 2) for x in os.getloadavg()]
    return {"cpus": cpus, "torch_threads": torch.get_num_threads(), "loadavg": load,
            "loaded": max(load[0], load[1]) > cpus, "python": platform.python_version(),
            "torch": torch.__version__}
