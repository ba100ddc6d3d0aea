"""ASAP explorer: the Panel app over a run directory."""
