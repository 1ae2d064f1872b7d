"""Measurements and pictures of built data: preview contact sheets and per-sample panels, the QC
report, inter-reader agreement of LIDC-IDRI, and CT image statistics for calibration."""
