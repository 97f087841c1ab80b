"""What every planner may choose from, shared so that the ILP and its slow twins (brute force,
baselines, the pipeline DP) search the same space without importing each other."""

# Token tiles per collective: 0 = the plain collective, then its GEMM; 1 = each rank's chunk is computed
# on while the others move; t > 1 = every chunk in t pieces (ir/schedule.py).
TILE_CHOICES = (0, 1, 2, 4, 8)

# Key/value actions sequence parallelism may take by default. KVATT (attend to key/value blocks as
# they arrive) is built and checked, but measured 5-7% slower than the plain gather at 256 tokens
# on four-uneven BERT-large while its cost predicted it faster (docs/PERFORMANCE.md, section 6):
# the planner takes it only when asked (sequence_plan(key_value_ops=KEY_VALUE_OPS)).
KEY_VALUE_CHOICES = ("KVAG",)
