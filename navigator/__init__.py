"""CT-guided I-125 seed-implant navigator.

Geometry is in DICOM patient coordinates (LPS, mm) of a named frame of reference at every public boundary;
doses in Gy (total dose of the permanent implant unless a name says otherwise); seed strength as air-kerma
strength in U (``sk_u``).
"""

__version__ = "0.1.0"
