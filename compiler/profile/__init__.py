"""galaxy-profile: measure this device's rates for the cost model (docs/PROFILING.md).

    device.py   GEMMs of the model's shapes, attention (SDPA), elementwise bytes/s: medians
    link.py     two gloo ranks ping-pong: alpha/beta of a link and the CPU cost of moving bytes
    report.py   the versioned profile / link JSON, the printed tables, TOML snippets
    cli.py      argument parsing only

A profile is read back by `ir/cluster_file.py` (`profile = "x.json"` on a device).
"""
