"""DICOM in and out: the only place in the navigator that imports pydicom.

CT series (``load_ct_series``, ``list_series``, ``write_ct_series``), RT Structure Set (``read_structure_set``,
``write_rtstruct``, ``structure_set_series_number``), RT Dose (``write_rtdose``, ``read_rtdose``) and brachy
RT Plan (``write_rtplan``, ``read_rtplan``; ``decayed_strength``: an I-125 seed's strength from its calibration
to the implant date); the studies of a PACS export in any layout (``find_studies``, ``load_ct_files``).
Geometry in and out is DICOM patient coordinates (LPS, mm) of the frame named on the objects.
"""

from navigator.io.dicom._base import PatientInfo, new_uid, sop_instance_uid_of
from navigator.io.dicom.ct import SeriesInfo, list_series, load_ct_series, write_ct_series
from navigator.io.dicom.rtdose import read_rtdose, write_rtdose
from navigator.io.dicom.rtplan import decayed_strength, read_rtplan, write_rtplan
from navigator.io.dicom.rtstruct import read_structure_set, structure_set_series_number, write_rtstruct
from navigator.io.dicom.studies import SeriesFiles, StudyFiles, StudyIndex, find_studies, load_ct_files

__all__ = ["PatientInfo", "new_uid", "sop_instance_uid_of", "SeriesInfo", "list_series", "load_ct_series",
           "write_ct_series", "read_structure_set", "write_rtstruct", "write_rtdose", "read_rtdose", "write_rtplan",
           "read_rtplan", "decayed_strength", "structure_set_series_number",
           "SeriesFiles", "StudyFiles", "StudyIndex", "find_studies", "load_ct_files"]
