"""Reading run folders back and rendering them: figures, the comparison table, the report."""

from multifcl.reporting.run_results import RunFolderError, RunResults, is_finished

__all__ = ["RunFolderError", "RunResults", "is_finished"]
