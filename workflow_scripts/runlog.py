"""Run a stage function under a Snakemake rule: its progress to the rule's log file, its error also to the console."""
from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path


def run_logged(log_path, fn, *args, **kwargs) -> None:
    """Call ``fn(*args, **kwargs)`` with logging (and warnings, tracebacks) sent to ``log_path``.

    On failure the full traceback goes to the log and a one-line message, naming the log, to the
    console; the process exits with status 1 so that Snakemake marks the job failed.
    """
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    console, stdout = sys.stderr, sys.stdout
    with open(log_path, "w", buffering=1) as log_file:
        sys.stderr = sys.stdout = log_file  # libraries that print (e.g. the Trainer's loss lines) too
        logging.basicConfig(stream=log_file, level=logging.INFO, force=True,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.captureWarnings(True)
        try:
            fn(*args, **kwargs)
        except Exception as error:
            traceback.print_exc(file=log_file)
            print(f"ERROR: {error.__class__.__name__}: {error}\n(full traceback in {log_path})", file=console)
            sys.exit(1)
        finally:
            sys.stderr, sys.stdout = console, stdout
