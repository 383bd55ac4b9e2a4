"""FlowPrefill: LLM serving with operator-level preemptible prefill and an SLO-aware scheduler.

`LLM` (the offline API) is imported lazily so that the torch-free packages (scheduler,
predictor, sim, workload, metrics, core) can be imported on a machine without torch.
"""

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "LLM":
        from flowprefill.llm import LLM

        return LLM
    raise AttributeError(f"module 'flowprefill' has no attribute {name!r}")
