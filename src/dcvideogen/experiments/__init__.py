"""The paper's two claims, reproduced small on real footage, one command each (DC-VideoGen Sec. 3.2, 3.3).

    python -m dcvideogen.experiments.temporal_modes --out runs/exp-temporal   # (i) Fig. 3-5, Table 1
    python -m dcvideogen.experiments.adaptation --out runs/exp-adapt          # (ii) Fig. 6, 7, 11

or `dcvg experiment temporal_modes|adaptation --out DIR`. Each is a resumable sequence of steps that trains
with the project's own trainers (`training.trainer_ae`, `adapt.train`), measures with its own metrics
(`evaluation`, `metrics`), and writes DIR/report/ (report.md, PNG plots, results.json). Scales (`--scale`):
`smoke` (the tests, seconds), `cpu` (the default, about 2 hours on 2 cores), `gpu` (a lent H100/H200).
"""

EXPERIMENTS = ("temporal_modes", "adaptation")
