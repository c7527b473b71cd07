"""The pipeline run: its stages in order, the step5 driver, and the command line behind pipeline.py."""
