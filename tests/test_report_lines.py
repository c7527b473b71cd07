"""The one line each long step prints when it ends: readable, rounded, naming where the outputs are."""
from microdoppler_finetune.report import lines
from microdoppler_finetune.report.example import make_example_run


def test_step_lines_name_their_outputs_with_rounded_numbers(tmp_path):
    work = make_example_run(tmp_path / "work", until="dataset")
    text = lines.step3_line(work / "dataset" / "manifest.csv")
    assert text.startswith("step3 done: 3 people, train 30 / val 5 / test 7 images; outputs in ")
    assert str(work / "dataset") in text
    assert lines.step2_line({"vavae": "a", "dinov2": "b"}, ["vavae", "dinov2"], "i.json", True) == \
        "step2 done: vavae, dinov2 ready; index i.json"
    assert "files missing" in lines.step2_line({}, ["vavae"], "i.json", False)
    step5 = {"name": "stage3", "parts": ["metrics", "export"], "seconds": 57.123, "validation_dir": "v/stage3",
             "metrics": {"summary": {"val": {"psnr": 22.912345, "ssim": 0.69712}}},
             "export": {"export": "export/vavae_encoder_for_dit"}}
    assert lines.step5_line(step5) == ("step5 done (metrics, export) for stage3 in 57.12 s: val PSNR 22.91 dB, "
                                       "SSIM 0.697; outputs: v/stage3, export/vavae_encoder_for_dit")
    dit = {"status": "time_budget", "step": 1200, "best_val_loss": 0.3171234, "run_dir": "w/dit",
           "pretrained": "w/dit/pretrained"}
    assert lines.dit_line(dit) == ("DiT training stopped (time_budget): rerun the same command to continue at step "
                                   "1200, best EMA validation loss 0.3171; checkpoints in w/dit/checkpoints, EMA "
                                   "model in w/dit/pretrained")
    info = {"files": [{"seen_in_training": False}, {"seen_in_training": True}], "seconds_per_image": 0.16,
            "checkpoint_step": 2500}
    assert lines.sample_line(info, "w/samples") == ("sampling done: 2 images (0.16 s each, 1 of unseen person x "
                                                    "condition pairs) from step 2500 in w/samples "
                                                    "(generation_info.json, __grid_by_person.jpg)")
    step6 = {"identification_test_accuracy": {"real@100%": 0.50521, "real+generated@100%": 0.5371},
             "generated_identified_by_real_classifier": {"accuracy": 0.4123, "chance": 0.125}}
    assert lines.step6_line(step6, "w/evaluation").startswith(
        "step6 done: test accuracy real@100% 0.505; real+generated@100% 0.537; generated images identified 0.412 "
        "(chance 0.125); tables in w/evaluation")
