"""What every planner may choose from, shared so that the ILP and its slow twins (brute force,
baselines, the pipeline DP) search the same space without importing each other."""

# Token tiles per collective: 0 = the plain collective, then its GEMM; 1 = each rank's chunk is computed
# on while the others move; t > 1 = every chunk in t pieces (ir/schedule.py).
TILE_CHOICES = (0, 1, 2, 4, 8)
