# FineRS, Dr. Seg and SegAnswer as one workflow. With no arguments it runs the embedded
# default (config/config.yaml): synthetic data and tiny models, on CPU.
# Parsing stays light: no torch or other heavy import happens here.
from snakemake.utils import min_version

# The pinned version (envs/requirements.txt): the profiles and the report use its options.
min_version("9.27")


configfile: os.path.join(workflow.basedir, "config", "config.yaml")


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/models.smk"
include: "rules/finers.smk"
include: "rules/seganswer.smk"
include: "rules/drseg.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        rules.data_all.input,
        rules.models_all.input,
        rules.finers_all.input,
        rules.seganswer_all.input,
        # Dr. Seg's own setting only when switched on (drseg.run; config/paper.yaml)
        rules.drseg_all.input if config["drseg"]["run"] else [],
        report_tables(),
