"""Finding the studies of a messy PACS export (``io.dicom.find_studies``: nested folders, names without
extension, patients mixed in one folder, a series split over two folders, a slice exported twice, files that
are not DICOM), loading a CT from files scattered over folders (``load_ct_files``), and choosing each study's
files (``cohort.study_tasks``), on the session's synthetic cohort and on hand-made headers."""

from __future__ import annotations

import numpy as np
import pytest

from navigator.cohort.study import StudyOptions, analyse_study, study_tasks
from navigator.errors import InputError
from navigator.io.dicom import (
    SeriesFiles,
    StudyFiles,
    StudyIndex,
    find_studies,
    load_ct_files,
)


@pytest.fixture(scope="module")
def index(cohort):
    return find_studies(cohort.studies_dir)


def test_every_study_is_found_whatever_the_layout(cohort, index):
    truth = cohort.truth
    assert {p["layout"] for p in truth["patients"]} == {"pacs", "mixed", "deep"}
    assert len(index.studies) == len(truth["patients"])
    by_uid = {s.study_uid: s for s in index.studies}
    n_slices = truth["spec"]["n_slices"]
    for p in truth["patients"]:
        st = by_uid[p["study_uid"]]
        assert st.patient_id == p["patient_id"] and st.study_date == p["study_date"]
        (ct,) = st.of_modality("CT")
        assert ct.series_uid == p["ct_series_uid"] and len(ct.files) == n_slices
        assert len(st.of_modality("RTPLAN")) == int(p["has_rt_plan"])
        (rs,) = st.of_modality("RTSTRUCT")
        assert rs.referenced_series_uids == (p["ct_series_uid"],)
        assert rs.frame_of_reference_uid == p["frame_of_reference_uid"]
        assert (p["target_name"] in rs.roi_names) == (p["broken"] != "no_target")
    assert index.duplicates == 1                                  # the slice exported twice is kept once
    assert [r for _, r in index.skipped] == ["not a DICOM file (no DICM preamble)"]   # archive/notes
    # README.txt, export.log, Thumbs.db (by their names) and .DS_Store (hidden) are passed over unread
    n_objects = sum(len(p["files"]["ct"]) + bool(p["files"]["rtstruct"]) + bool(p["files"]["rtplan"])
                    for p in truth["patients"])
    assert index.files_seen == n_objects + 1 + 1                  # + the duplicate + notes


def test_a_series_split_over_two_folders_loads_as_one_volume(cohort, index):
    p = next(p for p in cohort.truth["patients"] if p["layout"] == "deep" and p["broken"] is None)
    (ct,) = next(s for s in index.studies if s.study_uid == p["study_uid"]).of_modality("CT")
    assert {f.split("/")[-2] for f in ct.files} == {"part1", "part2"}
    vol = load_ct_files(ct.files)
    assert vol.series_uid == p["ct_series_uid"] and vol.array.shape == (cohort.truth["spec"]["n_slices"], 112, 112)
    z = [vol.ijk_to_lps([0.0, 0.0, float(k)]) @ vol.direction[:, 2] for k in range(vol.array.shape[0])]
    assert np.all(np.diff(z) > 0)
    seeds_ijk = vol.lps_to_ijk(np.array(p["seeds_mm"]))
    assert np.all((seeds_ijk > 0) & (seeds_ijk < np.array(vol.shape_ijk) - 1))


def test_tasks_name_files_only_and_known_problems(cohort, index):
    tasks = study_tasks(index, StudyOptions(target="gtv"))
    truth = {p["study_uid"]: p for p in cohort.truth["patients"]}
    for t in tasks:
        p = truth[t.study_uid]
        if p["broken"] == "no_target":
            assert "no structure named 'gtv'" in t.problem and "CarotidArtery" in t.problem
            assert analyse_study(t)["status"] == f"error: {t.problem}"
            continue
        assert t.problem is None and t.ct_series_uid == p["ct_series_uid"]
        assert all(isinstance(f, str) for f in (*t.ct_files, t.rtstruct_file, *t.rtplan_files))


def _series(uid, modality, frame="F1", refs=(), rois=(), files=("x",)):
    return SeriesFiles(series_uid=uid, modality=modality, sop_class_uid="", description="", series_number="1",
                       frame_of_reference_uid=frame, files=tuple(files), referenced_series_uids=tuple(refs),
                       roi_names=tuple(rois))


def _study(*series):
    return StudyFiles("P", "P^P", "1.2", "20200101", "", "", tuple(series))


def test_the_ct_the_structure_set_was_drawn_on_is_chosen():
    st = _study(_series("ct1", "CT", files=("a",)), _series("ct2", "CT", files=("b",)),
                _series("rs", "RTSTRUCT", refs=("ct2",), rois=("GTV", "Cord")))
    (t,) = study_tasks(StudyIndex("/x", [st], 3), StudyOptions())
    assert t.problem is None and t.ct_series_uid == "ct2" and t.ct_files == ("b",)
    st = _study(_series("ct1", "CT", frame="F1"), _series("ct2", "CT", frame="F2"),
                _series("rs", "RTSTRUCT", frame="F2", rois=("GTV",)))
    assert study_tasks(StudyIndex("/x", [st], 3), StudyOptions())[0].ct_series_uid == "ct2"
    st = _study(_series("ct1", "CT", frame="F1"), _series("ct2", "CT", frame="F1"),
                _series("rs", "RTSTRUCT", frame="F1", rois=("GTV",)))
    assert "references none of them" in study_tasks(StudyIndex("/x", [st], 3), StudyOptions())[0].problem


@pytest.mark.parametrize("series, says", [
    ((_series("rs", "RTSTRUCT", rois=("GTV",)),), "no CT series in the study (it holds RTSTRUCT)"),
    ((_series("ct", "CT"),), "no RT Structure Set in the study"),
    ((_series("ct", "CT"), _series("rs", "RTSTRUCT", rois=("Node",))), "no structure named 'GTV'"),
])
def test_studies_that_cannot_be_analysed_say_why(series, says):
    (t,) = study_tasks(StudyIndex("/x", [_study(*series)], 1), StudyOptions())
    assert says in t.problem


def test_a_folder_that_is_not_there_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        find_studies(tmp_path / "nope")
    (tmp_path / "f.dcm").write_bytes(b"x")
    with pytest.raises(InputError, match="is a file"):
        find_studies(tmp_path / "f.dcm")
    idx = find_studies(tmp_path)
    assert idx.studies == [] and idx.skipped[0][1] == "not a DICOM file (no DICM preamble)"


def test_headers_read_in_chunks_by_a_runner_group_the_same(cohort, index):
    from navigator.cluster import SerialRunner

    calls = []
    chunked = find_studies(cohort.studies_dir, mapper=SerialRunner().map, chunk_files=7,
                           progress=lambda done, total: calls.append((done, total)))
    assert chunked.studies == index.studies and chunked.skipped == index.skipped
    assert chunked.duplicates == index.duplicates and calls[-1][0] == calls[-1][1] == -(-index.files_seen // 7)
