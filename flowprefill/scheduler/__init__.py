"""The event-driven scheduler and its policies (orders x granularity x batching x dropping).

Pure Python: must not import torch, the model or the executor.
"""

from flowprefill.scheduler.batching import MAX_SCAN, batch_budget, form_batch
from flowprefill.scheduler.dropping import moore_hodgson
from flowprefill.scheduler.kv import BlockBudget, KVView, blocks_for
from flowprefill.scheduler.orders import ORDERS, Order, get_order
from flowprefill.scheduler.scheduler import DROPS, Scheduler

__all__ = [
    "DROPS",
    "MAX_SCAN",
    "ORDERS",
    "BlockBudget",
    "KVView",
    "Order",
    "Scheduler",
    "batch_budget",
    "blocks_for",
    "form_batch",
    "get_order",
    "moore_hodgson",
]
