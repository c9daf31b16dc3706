rule validate_inputs:
    input:
        PLAN.validate_inputs,
    output:
        L.validation("{subject}"),
    log:
        L.log("validate_inputs", "{subject}"),
    benchmark:
        L.benchmark("validate_inputs", "{subject}")
    group:
        "subject"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../envs/msimaging.yaml"
    script:
        "../../scripts/validate_inputs.py"


rule preprocess:
    input:
        unpack(PLAN.preprocess_inputs),
    output:
        image=L.n4_image("{subject}", "{session}", "{contrast}"),
    log:
        L.log("preprocess", "{subject}", "{session}", "{contrast}"),
    benchmark:
        L.benchmark("preprocess", "{subject}", "{session}", "{contrast}")
    group:
        "subject"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/msimaging.yaml"
    script:
        "../../scripts/preprocess.py"


rule brain_mask:
    input:
        unpack(PLAN.brain_mask_inputs),
    output:
        mask=L.brain_mask("{subject}", "{session}"),
        template_xfm=L.template_xfm("{subject}", "{session}"),
        qc=L.step_json("{subject}", "{session}", "brain_mask"),
    log:
        L.log("brain_mask", "{subject}", "{session}"),
    benchmark:
        L.benchmark("brain_mask", "{subject}", "{session}")
    group:
        "subject"
    # multi-threaded ITK registration is not reproducible run to run (DESIGN §9)
    threads: 1
    resources:
        mem_mb=3000,
        runtime=15,
    conda:
        "../envs/msimaging.yaml"
    script:
        "../../scripts/brain_mask.py"
