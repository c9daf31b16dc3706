rule segment_lesions:
    input:
        unpack(PLAN.segment_inputs),
    output:
        prob=L.lesion_probseg("{subject}", "{session}"),
        mask=L.lesion_mask("{subject}", "{session}"),
        dseg=L.lesion_dseg("{subject}", "{session}"),
        qc=L.step_json("{subject}", "{session}", "segment_lesions"),
    log:
        L.log("segment_lesions", "{subject}", "{session}"),
    benchmark:
        L.benchmark("segment_lesions", "{subject}", "{session}")
    group:
        "subject"
    threads: 1
    resources:
        mem_mb=3000,
        runtime=10,
    conda:
        "../envs/msimaging.yaml"
    script:
        "../../scripts/segment_lesions.py"


rule detect_enhancing:
    input:
        unpack(PLAN.enhancing_inputs),
    output:
        mask=L.enhancing_mask("{subject}", "{session}"),
        qc=L.step_json("{subject}", "{session}", "detect_enhancing"),
    log:
        L.log("detect_enhancing", "{subject}", "{session}"),
    benchmark:
        L.benchmark("detect_enhancing", "{subject}", "{session}")
    group:
        "subject"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/msimaging.yaml"
    script:
        "../../scripts/detect_enhancing.py"


rule compare_visits:
    input:
        unpack(PLAN.compare_inputs),
    output:
        new=L.new_mask("{subject}", "{session}"),
        enlarging=L.enlarging_mask("{subject}", "{session}"),
        qc=L.step_json("{subject}", "{session}", "compare_visits"),
    log:
        L.log("compare_visits", "{subject}", "{session}"),
    benchmark:
        L.benchmark("compare_visits", "{subject}", "{session}")
    group:
        "subject"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/msimaging.yaml"
    script:
        "../../scripts/compare_visits.py"
