"""pytest puts this folder on sys.path, so tests import `helpers` (and `dist/_gloo`) directly."""
