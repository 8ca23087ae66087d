import sys

sys.stderr = open(snakemake.log[0], "w")

from scalpel.io import write_yaml

write_yaml(dict(snakemake.params.spec), snakemake.output[0])
