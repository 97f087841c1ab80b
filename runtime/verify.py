"""`python -m galaxy_runtime.verify FILE...` in a bundle folder on a device: check those files
against manifest.json (sha256) with this device's Python, and print the manifest's own sha256.

galaxy-deploy runs it over ssh after copying, before anything loads; it also proves that the
device's interpreter has torch and safetensors. Exit 0 when every file matches, 2 otherwise
(one line on stderr names the file).
"""
from __future__ import annotations

import importlib
import sys

from . import bundle
from .errors import GalaxyRuntimeError


def main(argv: list[str]) -> int:
    try:
        importlib.import_module("safetensors")  # the device must be able to read its weights

        bundle.verify_manifest(".", argv)
    except ImportError as exc:
        sys.stderr.write(f"galaxy verify: error: this Python lacks {exc.name}; install torch and safetensors\n")
        return 2
    except GalaxyRuntimeError as exc:
        sys.stderr.write(f"galaxy verify: error: {' '.join(str(exc).split())}\n")
        return 2
    print(bundle.sha256_file(bundle.MANIFEST))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
