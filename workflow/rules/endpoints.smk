rule session_endpoints:
    input:
        unpack(PLAN.session_endpoint_inputs),
    output:
        row=L.session_row("{subject}", "{session}"),
        lesions=L.lesion_table("{subject}", "{session}"),
    params:
        info=PLAN.session_info,
    log:
        L.log("session_endpoints", "{subject}", "{session}"),
    benchmark:
        L.benchmark("session_endpoints", "{subject}", "{session}")
    group:
        "subject"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../envs/msimaging.yaml"
    script:
        "../../scripts/session_endpoints.py"


rule subject_endpoints:
    input:
        PLAN.subject_endpoint_inputs,
    output:
        L.subject_endpoints("{subject}"),
    log:
        L.log("subject_endpoints", "{subject}"),
    benchmark:
        L.benchmark("subject_endpoints", "{subject}")
    group:
        "subject"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    conda:
        "../envs/msimaging.yaml"
    script:
        "../../scripts/subject_endpoints.py"


rule qc_report:
    input:
        PLAN.qc_report_inputs,
    output:
        page=report(
            L.qc_page("{subject}"),
            caption="../report/qc_page.rst",
            category="QC pages",
            labels={"subject": "{subject}", "figure": "QC page"},
        ),
        figures=report(
            directory(L.figures_dir("{subject}")),
            patterns=["{name}.png"],
            caption="../report/qc_figure.rst",
            category="QC figures",
            subcategory="sub-{subject}",
            labels={"subject": "{subject}", "figure": "{name}"},
        ),
        inventory=L.counted_lesions("{subject}"),
    params:
        sessions=PLAN.subject_info,
    log:
        L.log("qc_report", "{subject}"),
    benchmark:
        L.benchmark("qc_report", "{subject}")
    group:
        "subject"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/msimaging.yaml"
    script:
        "../../scripts/qc_report.py"


# The group-level table takes a second: on a cluster it runs on the submit node, not as a job.
localrules:
    outcome_dataset,


rule outcome_dataset:
    input:
        unpack(PLAN.group_inputs),
    output:
        csv=L.ENDPOINTS_CSV,
        dictionary=L.ENDPOINTS_JSON,
        qc=L.QC_TSV,
        adjudication=L.ADJUDICATION_TSV,
    log:
        "logs/outcome_dataset/group.log",
    benchmark:
        "benchmarks/outcome_dataset/group.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../envs/msimaging.yaml"
    script:
        "../../scripts/outcome_dataset.py"


# The group page takes seconds: like the group tables it runs on the submit node.
localrules:
    cohort_report,


rule cohort_report:
    input:
        unpack(PLAN.cohort_inputs),
    output:
        page=report(
            L.COHORT_HTML,
            caption="../report/cohort_page.rst",
            category="Cohort",
            labels={"figure": "cohort page"},
        ),
    log:
        "logs/cohort_report/group.log",
    benchmark:
        "benchmarks/cohort_report/group.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../envs/msimaging.yaml"
    script:
        "../../scripts/cohort_report.py"
