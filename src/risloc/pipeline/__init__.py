"""The end-to-end localizer and its estimates file."""

from risloc.pipeline.estimates_file import read_estimates, write_estimates
from risloc.pipeline.localizer import METHODS, LocalizationResult, Localizer

__all__ = ["METHODS", "LocalizationResult", "Localizer", "read_estimates", "write_estimates"]
