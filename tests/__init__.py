"""The test suite. It and each folder in it are packages, so that pytest names a test module by its path
(``tests.io.test_dicom_ct``), two folders may hold files of the same name, and ``tests.conftest`` imports
the same way from every folder."""
