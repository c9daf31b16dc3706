"""The workflow plan: which files each rule needs, for the Snakemake input functions.

Snakemake rules only wire; every decision about which inputs exist (contrasts present, the
session reference, baseline and previous visits) is made here, from :func:`bids.discover`,
so it is testable without Snakemake.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from msimaging import layout as L
from msimaging.bids import Session, Study, Subject, discover


class Plan:
    def __init__(self, study: Study, adjudication: str | None = None, arm_dataset: str | None = None):
        self.study = study
        self.adjudication = adjudication  # the reader's adjudication TSV (config outcome.adjudication)
        self.arm_dataset = arm_dataset    # the outcome dataset, read for arms only when the trial is unblinded

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "Plan":
        bids_dir = config.get("bids_dir") or ""
        labels = list(config.get("participant_label") or []) or None
        baseline = (config.get("baseline_session") or "").removeprefix("ses-") or None
        adjudication = str((config.get("outcome") or {}).get("adjudication") or "") or None
        cohort = config.get("cohort") or {}
        dataset = str((config.get("outcome") or {}).get("dataset") or "") or None
        arm_dataset = dataset if cohort.get("unblinded") and cohort.get("arm_column") else None
        return cls(discover(bids_dir, labels, baseline) if bids_dir else Study(bids_dir=Path(".")), adjudication,
                   arm_dataset)

    # --- lookups -------------------------------------------------------------------------------
    def subjects(self) -> list[str]:
        return list(self.study.subjects)

    def subject(self, sub: str) -> Subject:
        return self.study.subjects[sub]

    def session(self, sub: str, ses: str) -> Session:
        return self.subject(sub).session(ses)

    def sessions(self, sub: str) -> list[str]:
        return [s.label for s in self.subject(sub).sessions]

    def ref(self, sub: str, ses: str) -> str:
        ref = self.session(sub, ses).reference
        if ref is None:
            raise ValueError(f"sub-{sub} ses-{ses} has neither FLAIR nor T2w")
        return ref

    def baseline(self, sub: str) -> str:
        return self.subject(sub).baseline.label

    def is_baseline(self, sub: str, ses: str) -> bool:
        return self.baseline(sub) == ses

    def previous(self, sub: str, ses: str) -> str | None:
        prev = self.subject(sub).previous(ses)
        return prev.label if prev else None

    def has_gd(self, sub: str, ses: str) -> bool:
        images = self.session(sub, ses).images
        return "T1w" in images and "ceT1w" in images

    def missing_gd_reason(self, sub: str, ses: str) -> str | None:
        images = self.session(sub, ses).images
        missing = [name for key, name in (("ceT1w", "ce-gadolinium T1w"), ("T1w", "T1w")) if key not in images]
        return f"{' and '.join(missing)} missing" if missing else None

    def usable(self, sub: str) -> bool:
        """Whether the subject's steps can be planned (sessions, each with a FLAIR or T2w).

        An unusable subject gets only its validate_inputs job, which fails and names the
        problem; planning its other steps would stop the DAG for every subject.
        """
        sessions = self.subject(sub).sessions
        return bool(sessions) and all(s.reference is not None for s in sessions)

    def days_since_baseline(self, sub: str, ses: str) -> int | None:
        bl = self.subject(sub).baseline.acq_time
        t = self.session(sub, ses).acq_time
        if bl is None or t is None:
            return None
        return (t.date() - bl.date()).days

    def session_info(self, wc: Any) -> dict[str, Any]:
        """What a session's endpoints row needs to know about the study design."""
        sub, ses = wc.subject, wc.session
        return {"is_baseline": self.is_baseline(sub, ses),
                "days_since_baseline": self.days_since_baseline(sub, ses),
                "missing_gd_reason": self.missing_gd_reason(sub, ses),
                "reference": self.ref(sub, ses)}

    def subject_info(self, wc: Any) -> list[dict[str, Any]]:
        """Per session of a subject: label, role and the files its QC page shows."""
        sub = wc.subject
        out = []
        for ses in self.sessions(sub):
            info: dict[str, Any] = {"session": ses, "is_baseline": self.is_baseline(sub, ses),
                                    "reference": self.ref(sub, ses),
                                    "ref_image": self.preproc(sub, ses),
                                    "brain": L.brain_mask(sub, ses), "lesions": L.lesion_mask(sub, ses),
                                    "dseg": L.lesion_dseg(sub, ses), "lesion_table": L.lesion_table(sub, ses)}
            ref = self.ref(sub, ses)
            info["coregistered"] = {c: self.preproc(sub, ses, c) for c in self.session(sub, ses).contrasts
                                    if c != ref}
            if self.has_gd(sub, ses):
                info.update(ce_image=self.preproc(sub, ses, "ceT1w"), enhancing=L.enhancing_mask(sub, ses),
                            t1_image=self.preproc(sub, ses, "T1w"))
            if not self.is_baseline(sub, ses):
                info.update(new=L.new_mask(sub, ses), enlarging=L.enlarging_mask(sub, ses),
                            to_baseline_xfm=L.baseline_xfm(sub, ses))
            out.append(info)
        return out

    # --- targets -------------------------------------------------------------------------------
    def subject_targets(self, sub: str) -> list[str]:
        return [L.subject_endpoints(sub), L.qc_page(sub)]

    def all_targets(self) -> list[str]:
        # QC pages are deliverables: a deleted page is rebuilt even when the tables are up to date
        return [L.ENDPOINTS_CSV, L.ENDPOINTS_JSON, L.QC_TSV, L.COHORT_HTML,
                *(L.qc_page(s) for s in self.subjects() if self.usable(s))]

    def raw_images(self, sub: str) -> list[str]:
        return [str(p) for s in self.subject(sub).sessions for p in s.images.values()]

    def session_raw_images(self, sub: str, ses: str) -> list[str]:
        return [str(p) for p in self.session(sub, ses).images.values()]

    # --- input functions (take Snakemake wildcards) ----------------------------------------------
    def validate_inputs(self, wc: Any) -> list[str]:
        return self.raw_images(wc.subject)

    def preprocess_inputs(self, wc: Any) -> dict[str, str]:
        return {"image": str(self.session(wc.subject, wc.session).images[wc.contrast]),
                "validation": L.validation(wc.subject)}

    def brain_mask_inputs(self, wc: Any) -> dict[str, str]:
        return {"ref": L.n4_image(wc.subject, wc.session, self.ref(wc.subject, wc.session))}

    def coregister_inputs(self, wc: Any) -> dict[str, str]:
        ref = self.ref(wc.subject, wc.session)
        return {"moving": L.n4_image(wc.subject, wc.session, wc.contrast),
                "ref": L.n4_image(wc.subject, wc.session, ref),
                "brain": L.brain_mask(wc.subject, wc.session)}

    def preproc(self, sub: str, ses: str, contrast: str | None = None) -> str:
        ref = self.ref(sub, ses)
        return L.preproc_image(sub, ses, contrast or ref, ref)

    def to_baseline_inputs(self, wc: Any) -> dict[str, str]:
        bl = self.baseline(wc.subject)
        return {"fu": self.preproc(wc.subject, wc.session), "fu_brain": L.brain_mask(wc.subject, wc.session),
                "bl": self.preproc(wc.subject, bl), "bl_brain": L.brain_mask(wc.subject, bl)}

    def segment_inputs(self, wc: Any) -> dict[str, str]:
        sub, ses = wc.subject, wc.session
        inputs = {c: self.preproc(sub, ses, c) for c in self.session(sub, ses).contrasts}
        inputs["ref"] = self.preproc(sub, ses)
        inputs["brain"] = L.brain_mask(sub, ses)
        inputs["template_xfm"] = L.template_xfm(sub, ses)
        return inputs

    def enhancing_inputs(self, wc: Any) -> dict[str, str]:
        sub, ses = wc.subject, wc.session
        inputs = {"ce": self.preproc(sub, ses, "ceT1w"), "t1": self.preproc(sub, ses, "T1w"),
                  "brain": L.brain_mask(sub, ses), "lesions": L.lesion_mask(sub, ses),
                  "template_xfm": L.template_xfm(sub, ses)}
        if self.ref(sub, ses) == "FLAIR":
            inputs["flair"] = self.preproc(sub, ses)
        if "T2w" in self.session(sub, ses).contrasts:
            inputs["t2w"] = self.preproc(sub, ses, "T2w")
        return inputs

    def compare_inputs(self, wc: Any) -> dict[str, str]:
        """A follow-up, the baseline and the previous visit: FLAIR, brain, lesions, transforms, and
        the T2w on the FLAIR grid of each visit that has one besides its reference (confirmation)."""
        sub, ses = wc.subject, wc.session
        bl = self.baseline(sub)
        prev = self.previous(sub, ses) or bl
        inputs = {}
        for key, visit in (("fu", ses), ("bl", bl), ("prev", prev)):
            inputs[key] = self.preproc(sub, visit)
            inputs[f"{key}_brain"] = L.brain_mask(sub, visit)
            inputs[f"{key}_dseg"] = L.lesion_dseg(sub, visit)
            if visit != bl:
                inputs[f"{key}_xfm"] = L.baseline_xfm(sub, visit)
            if "T2w" in self.session(sub, visit).contrasts and self.ref(sub, visit) != "T2w":
                inputs[f"{key}_t2"] = self.preproc(sub, visit, "T2w")
        return inputs

    def measure_inputs(self, wc: Any) -> dict[str, str]:
        sub, ses = wc.subject, wc.session
        inputs = {"ref": self.preproc(sub, ses), "brain": L.brain_mask(sub, ses),
                  "lesions": L.lesion_mask(sub, ses)}
        if not self.is_baseline(sub, ses):
            bl = self.baseline(sub)
            inputs.update(bl=self.preproc(sub, bl), bl_brain=L.brain_mask(sub, bl),
                          bl_lesions=L.lesion_mask(sub, bl), xfm=L.baseline_xfm(sub, ses))
        return inputs

    def step_reports(self, sub: str, ses: str) -> list[str]:
        """Every QC/figure JSON of one session."""
        reports = [L.step_json(sub, ses, "brain_mask"), L.step_json(sub, ses, "segment_lesions"),
                   L.step_json(sub, ses, "measure_brain")]
        reports += [L.contrast_qc(sub, ses, c, self.ref(sub, ses)) for c in self.session(sub, ses).contrasts]
        if not self.is_baseline(sub, ses):
            reports += [L.step_json(sub, ses, "register_to_baseline"), L.step_json(sub, ses, "compare_visits")]
        if self.has_gd(sub, ses):
            reports.append(L.step_json(sub, ses, "detect_enhancing"))
        return reports

    def session_endpoint_inputs(self, wc: Any) -> dict[str, Any]:
        sub, ses = wc.subject, wc.session
        inputs: dict[str, Any] = {"dseg": L.lesion_dseg(sub, ses), "reports": self.step_reports(sub, ses),
                                  "raw": self.session_raw_images(sub, ses),
                                  "flair_z": self.preproc(sub, ses)}
        if self.has_gd(sub, ses):
            inputs["enhancing"] = L.enhancing_mask(sub, ses)
        if not self.is_baseline(sub, ses):
            inputs["compare"] = L.step_json(sub, ses, "compare_visits")
        return inputs

    def subject_endpoint_inputs(self, wc: Any) -> list[str]:
        return [L.session_row(wc.subject, ses) for ses in self.sessions(wc.subject)]

    def qc_report_inputs(self, wc: Any) -> list[str]:
        sub = wc.subject
        files = [L.subject_endpoints(sub)]
        for ses in self.sessions(sub):
            files += [L.lesion_mask(sub, ses), L.lesion_dseg(sub, ses), L.brain_mask(sub, ses),
                      L.lesion_table(sub, ses)]
            files += [self.preproc(sub, ses, c) for c in self.session(sub, ses).contrasts]
            if self.has_gd(sub, ses):
                files += [L.enhancing_mask(sub, ses)]
            if not self.is_baseline(sub, ses):
                files += [L.new_mask(sub, ses), L.enlarging_mask(sub, ses), L.baseline_xfm(sub, ses)]
        return files

    def group_inputs(self, wc: Any = None) -> dict[str, list[str]]:
        subs = [s for s in self.subjects() if self.usable(s)]
        inputs = {"validations": [L.validation(s) for s in self.subjects() if not self.usable(s)],
                  "tables": [L.subject_endpoints(s) for s in subs],
                  "pages": [L.qc_page(s) for s in subs],
                  "inventories": [L.counted_lesions(s) for s in subs],
                  "reports": [r for s in subs for ses in self.sessions(s) for r in self.step_reports(s, ses)]}
        if self.adjudication:
            inputs["adjudication"] = [self.adjudication]
        return inputs

    def cohort_inputs(self, wc: Any = None) -> dict[str, list[str] | str]:
        """The group tables, the subject pages it links to and, for an unblinded trial, the outcome dataset."""
        inputs: dict[str, list[str] | str] = {"csv": L.ENDPOINTS_CSV, "qc": L.QC_TSV,
                                              "pages": [L.qc_page(s) for s in self.subjects() if self.usable(s)]}
        if self.arm_dataset:
            inputs["dataset"] = self.arm_dataset
        return inputs
