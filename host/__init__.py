"""galaxy.host: tooling that runs on the machine that starts a cluster, never on a device.

The launcher (`galaxy-run`) and the emulator live here; `galaxy.runtime` stays what every
bundle carries (torch + safetensors only).
"""
