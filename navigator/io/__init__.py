"""Input and output: DICOM (``navigator.io.dicom``, the only pydicom importer) and atomic result files."""

from navigator.io.files import json_default, write_json, write_text

__all__ = ["json_default", "write_json", "write_text"]
