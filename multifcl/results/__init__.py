"""The run directory: config, metrics, per-round costs, plot and the printed summary."""

from multifcl.results.run_directory import RunDirectory, default_output_dir
from multifcl.results.summary_table import print_summary

__all__ = ["RunDirectory", "default_output_dir", "print_summary"]
