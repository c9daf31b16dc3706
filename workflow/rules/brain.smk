rule measure_brain:
    input:
        unpack(PLAN.measure_inputs),
    output:
        qc=L.step_json("{subject}", "{session}", "measure_brain"),
    params:
        ref_contrast=lambda wc: PLAN.ref(wc.subject, wc.session),
    log:
        L.log("measure_brain", "{subject}", "{session}"),
    benchmark:
        L.benchmark("measure_brain", "{subject}", "{session}")
    group:
        "subject"
    threads: 1
    resources:
        mem_mb=3000,
        runtime=10,
    conda:
        "../envs/msimaging.yaml"
    script:
        "../../scripts/measure_brain.py"
