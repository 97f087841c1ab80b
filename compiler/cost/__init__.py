"""Cost model: ModelSummary + Cluster -> CostTable (numbers only), and predict(plan, table)."""
from galaxy.compiler.cost.latency import block_s, predict, total_latency_s
from galaxy.compiler.cost.memory import memory_shortfall_bytes, plan_memory_bytes
from galaxy.compiler.cost.table import CostTable, build_cost_table

__all__ = ["CostTable", "block_s", "build_cost_table", "memory_shortfall_bytes", "plan_memory_bytes",
           "predict", "total_latency_s"]
