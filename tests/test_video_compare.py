"""The video plan's reading rules as docs/efficient/video_compare.py applies them."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("video_compare", ROOT / "docs" / "efficient" / "video_compare.py")
vc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(vc)


def _run(**kw):
    base = {"identity_consistency": 0.0, "speed_w1_rel": 0.3, "class_agreement_excess": 0.0,
            "class_agreement_excess_se": 0.01, "shape_step_ratio": 1.0, "shape_step_ratio_se": 0.01,
            "loss_trained": 0.55, "accuracy": 0.5}
    return {**base, **kw}


def test_per_clip_difference_counts_from_one_tenth():
    c = vc.compare(_run(identity_consistency=0.35), _run(identity_consistency=0.26))
    assert not c["identity_consistency"]["counts"]  # 0.09 < 0.1
    c = vc.compare(_run(speed_w1_rel=0.15), _run(speed_w1_rel=0.3))
    assert c["speed_w1_rel"]["counts"] and c["speed_w1_rel"]["better"] == "first"  # lower W1 is better


def test_temporal_difference_needs_two_standard_errors_and_five_hundredths():
    # SE of the difference: hypot(0.03, 0.04) = 0.05; a difference of 0.09 is under 2 SE = 0.1
    c = vc.compare(_run(shape_step_ratio=0.91, shape_step_ratio_se=0.03), _run(shape_step_ratio_se=0.04))
    assert abs(c["shape_step_ratio"]["se"] - 0.05) < 1e-12 and not c["shape_step_ratio"]["counts"]
    # 0.04 over 2 SE (0.0283) but under 0.05 in absolute value
    c = vc.compare(_run(shape_step_ratio=0.96), _run())
    assert not c["shape_step_ratio"]["counts"]
    c = vc.compare(_run(shape_step_ratio=0.8), _run())
    assert c["shape_step_ratio"]["counts"] and c["shape_step_ratio"]["better"] == "first"
    c = vc.compare(_run(class_agreement_excess=-0.2), _run())
    assert c["class_agreement_excess"]["counts"] and c["class_agreement_excess"]["better"] == "second"


def test_reports_in_a_folder_are_read_with_rescored_temporal_figures(tmp_path):
    ev = {"accuracy": 0.5, "identity_consistency": 0.0, "speed_w1_rel": 0.3, "constant_velocity": 0.0}
    rep = {"variant": "poly", "frames": 44, "tokens": 1100, "steps_trained": 10, "loss_trained": 0.5,
           "loss_init": 1.0, "beats_init": True, "beats_gaussian": True, "eval": ev,
           "config": {"model": {"qk_norm": True, "qk_dim": 2, "attention": "poly"}}}
    (tmp_path / "R5_poly_F44.json").write_text(json.dumps(rep))
    model = {"class_agreement_excess": 0.01, "class_agreement_excess_se": 0.005, "shape_step_ratio": 0.9,
             "shape_step_ratio_se": 0.02}
    (tmp_path / "temporal.json").write_text(json.dumps({"runs": {"x": {"attention": "poly", "frames": 44,
                                                                       "model": model}}}))
    runs = vc.load_runs(tmp_path)
    assert set(runs) == {"R5"} and runs["R5"]["shape_step_ratio"] == 0.9 and runs["R5"]["tokens"] == 1100
