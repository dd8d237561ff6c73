"""Writing a run folder: its layout, the run directory, checkpoints, resume, the summary."""

from multifcl.results.run_directory import RunDirectory, default_output_dir
from multifcl.results.summary_table import print_summary

__all__ = ["RunDirectory", "default_output_dir", "print_summary"]
