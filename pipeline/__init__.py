"""ASAP pipeline: image folders -> explained run directory."""
