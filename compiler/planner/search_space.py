"""What every planner may choose from, shared so that the ILP and its slow twins (brute force,
baselines, the pipeline DP) search the same space without importing each other."""

TILE_CHOICES = (1, 2, 4, 8)  # sequence tiles per collective; 1 = the plain collective
