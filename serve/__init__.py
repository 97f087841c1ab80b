"""galaxy.serve: persistent ranks behind an HTTP endpoint (galaxy-serve) and its Python client."""
from .client import Client, ServeError

__all__ = ["Client", "ServeError"]
