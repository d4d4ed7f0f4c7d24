"""The example pipeline: a small shop service evolving its own database."""
