rule coregister:
    input:
        unpack(PLAN.coregister_inputs),
    output:
        xfm=L.contrast_xfm("{subject}", "{session}", "{contrast}", "{ref}"),
        image=L.preproc_image("{subject}", "{session}", "{contrast}", "{ref}"),
        qc=L.contrast_qc("{subject}", "{session}", "{contrast}", "{ref}"),
        png=L.registration_figure("{subject}", "{session}", "{contrast}_to-{ref}"),
    log:
        L.log("coregister", "{subject}", "{session}", "{contrast}_to-{ref}"),
    benchmark:
        L.benchmark("coregister", "{subject}", "{session}", "{contrast}_to-{ref}")
    group:
        "subject"
    # multi-threaded ITK registration is not reproducible run to run (DESIGN §9)
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/msimaging.yaml"
    script:
        "../../scripts/coregister.py"


rule register_to_baseline:
    input:
        unpack(PLAN.to_baseline_inputs),
    output:
        xfm=L.baseline_xfm("{subject}", "{session}"),
        qc=L.step_json("{subject}", "{session}", "register_to_baseline"),
        png=L.registration_figure("{subject}", "{session}", "to-baseline"),
    log:
        L.log("register_to_baseline", "{subject}", "{session}"),
    benchmark:
        L.benchmark("register_to_baseline", "{subject}", "{session}")
    group:
        "subject"
    # multi-threaded ITK registration is not reproducible run to run (DESIGN §9)
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/msimaging.yaml"
    script:
        "../../scripts/register_to_baseline.py"
