"""Rate probes in the assets: their results as materialization metadata and on the asset's MLflow run.

The measuring code is in `hnr_assets.lib` next to each stage's code (`lib.runtime.rates` for the record);
an asset whose profile sets `runtime.rate_probes.enabled` calls it after its main work and hands the
probes here. `python -m hnr_assets.cli rates` prints them back from the latest materializations.
"""

from collections.abc import Sequence

from hnr_assets.lib.runtime.rates import RateProbe, probe_metadata, split_for_mlflow

# Metadata key that lists the probe stages of a materialization (the table reads the rest by stage).
STAGES_KEY = "rate/stages"


def probes_metadata(probes: Sequence[RateProbe]) -> dict[str, float | int | str]:
    """Flat `rate/<stage>/<field>` metadata of every probe, plus `rate/stages` (empty when none ran)."""
    out: dict[str, float | int | str] = {}
    for probe in probes:
        out.update(probe_metadata(probe))
    if probes:
        out[STAGES_KEY] = ",".join(p.stage for p in probes)
    return out


def log_probes(run, probes: Sequence[RateProbe], prefix: str = "") -> None:
    """Rates and ratios as MLflow metrics (`<prefix>rate/<stage>/hnr`, ...), names and reasons as tags.

    Tags, not parameters: a run that several partitions log to (an encoder scored on each dataset)
    would otherwise set one parameter twice. `prefix` keeps those partitions apart (`eval/<dataset>/`).
    """
    flat = probes_metadata(probes)
    if not flat:
        return
    metrics, strings = split_for_mlflow(flat)
    metrics.update({k: float(v) for k, v in flat.items() if k.endswith("/sample")})
    run.log_metrics({prefix + k: v for k, v in metrics.items()})
    run.set_tags({prefix + k: v for k, v in strings.items() if not k.endswith("/sample")})
