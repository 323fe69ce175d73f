"""The typed result row: today's lines read and written unchanged, older lines upgraded."""
from spatialprobe.rows import ResultRow, rows_to_json

LINE = {"model": "m [shuffled tokens]", "label": "M", "family": "dinov2", "task": "spatial_probe", "seed": 0,
        "control": "shuffled", "variant": "shuffled", "stage": "vision.block.1", "probe": "dense",
        "metric": "spatial_iou", "value": 0.5, "ci_low": 0.4, "ci_high": 0.6, "ci_covers": "test", "floor": 0.1,
        "ceiling": 0.9, "n": 10, "score": "learned", "fit": "exact-loio"}


def test_a_line_round_trips_with_every_field_and_extra():
    assert rows_to_json([LINE]) == [LINE]
    row = ResultRow.from_json(LINE)
    assert row.variant == "shuffled" and row.extra == {"score": "learned", "fit": "exact-loio"}


def test_a_schema_1_line_gains_its_variant_from_the_control():
    old = {k: v for k, v in LINE.items() if k != "variant"}
    assert rows_to_json([old])[0]["variant"] == "shuffled"


def test_unavailable_and_reference_fields_are_written_only_when_set():
    row = ResultRow(model="m", task="latent_alignment", metric="cka", value=None, unavailable="no VAE weights here")
    line = row.to_json()
    assert line["unavailable"] == "no VAE weights here" and line["value"] is None and "ref_model" not in line
    assert ResultRow(model="m", task="t", metric="cka", value=0.3, ref_model="vae", ref_stage="vae.latent").to_json()[
        "ref_stage"] == "vae.latent"
