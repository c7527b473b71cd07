"""report.html / report.md / report.json on made-up work dirs: complete, stopped early, empty, broken files.

Every page is parsed (balanced tags), every image must be a data URI that PIL decodes, and nothing may point at the
network. The made-up runs (microdoppler_finetune.report.example) hold every file the report reads, in the formats
the stages write.
"""
import base64
import io
import json
import re
from html.parser import HTMLParser

import pytest
from PIL import Image

from microdoppler_finetune.report import __main__ as report_cli
from microdoppler_finetune.report.example import make_example_run
from microdoppler_finetune.report.page import write_html
from microdoppler_finetune.report.summary import write_report

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
FULL_STAGES = ("setup", "simulate", "prepare", "preview", "vae", "export", "dit", "sample", "evaluate")
COMMAND = "python -m microdoppler_finetune.pipeline demo --work_dir w"


class PageParser(HTMLParser):
    """Collects images, links and ids, and checks that every element is closed in order."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.images, self.urls, self.ids, self.errors = [], [], [], set(), []
        self.text = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            assert attrs["id"] not in self.ids, f"duplicate id {attrs['id']}"
            self.ids.add(attrs["id"])
        if tag == "img":
            self.images.append(attrs)
        for key in ("src", "href"):
            if attrs.get(key):
                self.urls.append(attrs[key])
        if tag not in VOID:
            self.stack.append((tag, self.getpos()))

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.stack.pop()

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1][0] != tag:
            self.errors.append(f"</{tag}> at {self.getpos()} closes {self.stack[-1] if self.stack else 'nothing'}")
            return
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def check_page(path) -> PageParser:
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    parser = PageParser()
    parser.feed(text)
    parser.close()
    assert not parser.errors, parser.errors[:5]
    assert not parser.stack, f"unclosed: {parser.stack[:5]}"
    for url in parser.urls:  # self-contained: data URIs and in-page anchors only
        assert url.startswith(("data:image/", "#")), url[:80]
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", text)
    assert "<script" not in text.lower()
    for image in parser.images:
        header, _, payload = image["src"].partition(",")
        assert header in ("data:image/png;base64", "data:image/jpeg;base64"), header
        decoded = Image.open(io.BytesIO(base64.b64decode(payload, validate=True)))
        decoded.load()
        assert decoded.width > 0 and decoded.height > 0
        assert image.get("alt"), "every image has an alt text"
    parser.page_text = "".join(parser.text)
    return parser


def stage_log(until: str = "evaluate", incomplete: str = "") -> list:
    log = []
    for stage in FULL_STAGES:
        entry = {"stage": stage, "seconds": 12.345}
        if stage == "export":
            entry["before_finetuning"] = {"weights": "w/vae/stage1/initial_weights.safetensors",
                                          "val": {"psnr": 7.151234, "ssim": 0.0181234}}
        if stage == "simulate":
            entry["summary"] = {"args": {"people": 3, "conditions": ["Normal_line", "Backpack_line"]},
                                "radar": {f"key{i}": i / 3 for i in range(20)}}
        if stage == until and incomplete:
            log.append({"stage": stage, "seconds": 1.0, "incomplete": incomplete})
            break
        log.append(entry)
        if stage == until:
            break
    return log


def test_complete_run_has_every_part_with_decodable_images(tmp_path):
    work = make_example_run(tmp_path / "work")
    write_html(work, log=stage_log(), stages=FULL_STAGES, mode="demo", command=COMMAND, preset="cpu_demo",
               strict=True)  # strict: a part that cannot be drawn fails the test instead of becoming a note
    path = write_report(work, stage_log(), mode="demo", command=COMMAND, preset="cpu_demo", stages=FULL_STAGES)
    page = check_page(work / "report.html")
    assert {"unavailable", "run", "dataset", "vae", "dit", "samples", "evaluation", "study"} <= page.ids
    assert len(page.images) >= 20
    text = page.page_text
    assert COMMAND in text and "cpu_demo" in text and "not run" not in text
    # What was not available, at the top in the box, from stage_result.json / metrics.json / the files
    box = text[text.index("Not available in this run"):text.index("Parts:")]
    for fact in ("No released VA-VAE weights", "Random alignment target", "Random LPIPS backbone",
                 "LPIPS metric: unavailable", "Inception FID", "No CUDA GPU"):
        assert fact in box, fact
    assert "unseen pair: withheld (test)" in text  # the withheld pair is marked next to its test-split images
    assert "0.5051 ± 0.012 (n=3)" in text  # the study's multi-seed cells
    assert "rows: per_condition (3 rows)" in text and "NOT reached: real + generated beats" in \
        (work / "report.md").read_text()
    assert "λ_vf" in text and "λ_adv" in text
    assert "Test accuracy per condition" in text and "Test accuracy per person" in text
    html = (work / "report.html").read_text()
    assert html.count("class=\"unseen\"") == 1
    # report.json keeps the stage log; report.md is readable
    assert json.loads((work / "report.json").read_text())[0]["stage"] == "setup"
    md = path.read_text()
    assert "| evaluate |" in md and COMMAND in md
    assert "before_finetuning.val.psnr: 7.151<br>" in md  # rounded, key: value, no JSON dump
    assert "… 8 more in report.json" in md  # long results are cut by items, never mid-value
    assert "{" not in md.split("## Stages")[1]
    assert "## Not available in this run" in md and "Random LPIPS backbone" in md


@pytest.mark.parametrize("until", ["dataset", "vae"])
def test_a_run_that_stopped_early_shows_not_run_parts(tmp_path, until):
    work = make_example_run(tmp_path / "work", until=until)
    stage = "preview" if until == "dataset" else "vae"
    write_report(work, stage_log(stage, incomplete="VA-VAE fine-tuning stopped before its last stage finished"),
                 mode="vae", command="c", preset="p100", stages=FULL_STAGES[:6])
    page = check_page(work / "report.html")
    text = page.page_text
    assert "not run: DiT training" in text and "not run: sampling" in text
    assert "not run: identification experiments" in text and "not run: augmentation study" in text
    assert "stopped early: VA-VAE fine-tuning stopped" in text or until == "dataset"
    md = (work / "report.md").read_text()
    assert "| export | – | not run |" in md
    if until == "dataset":
        assert "not run: VA-VAE fine-tuning" in text


def test_an_empty_work_dir_still_gets_a_page(tmp_path):
    write_report(tmp_path, [], mode="demo", command="c", preset="cpu_demo")
    page = check_page(tmp_path / "report.html")
    assert page.page_text.count("not run") >= 5 and not page.images
    assert "Nothing was missing" in page.page_text


def test_broken_files_become_notes_not_crashes(tmp_path):
    work = make_example_run(tmp_path / "work")
    (work / "vae" / "stage2" / "stage_result.json").write_text("{ half a file")
    (work / "evaluation" / "generation" / "generation_metrics.json").write_text("[1, 2")
    (work / "validation" / "before_finetuning" / "reconstruction_results.png").write_bytes(b"\x89PNG\r\n\x1a\n...")
    (work / "dit" / "train_log.csv").write_text("step,event,train_loss\n1,train,nan\nx,train,\n")
    (work / "study" / "results.json").write_text(json.dumps([{"seed": 0, "acc": 0.5}, {"seed": 1, "acc": 0.6}]))
    write_html(work, stages=(), command="c", preset="p", strict=True)
    page = check_page(work / "report.html")
    text = page.page_text
    assert "not run: VA-VAE stage2" in text
    assert "reconstructions (reconstruction_results.png): the image could not be read" in text
    assert "not run: generation metrics" in text


def test_cli_rebuilds_the_page_from_the_folders_and_keeps_the_header(tmp_path, capsys):
    work = make_example_run(tmp_path / "work")
    assert report_cli.main([str(work), "--command", "Kaggle notebook", "--preset", "p100"]) == 0
    assert "Kaggle notebook" in check_page(work / "report.html").page_text
    (work / "report.html").unlink()
    assert report_cli.main([str(work)]) == 0  # command and preset come back from report.md
    text = check_page(work / "report.html").page_text
    assert "Kaggle notebook" in text and "p100" in text
    assert report_cli.main([str(tmp_path / "missing")]) == 2


def test_without_preview_png_the_report_draws_its_own_from_the_manifest(tmp_path):
    work = make_example_run(tmp_path / "work", until="dataset")
    (work / "preview.png").unlink()  # step3 alone (the Kaggle notebook) draws none
    write_html(work, strict=True)
    page = check_page(work / "report.html")
    previews = [i for i in page.images if i["alt"].startswith("ID_")]
    assert len(previews) == 6  # 3 people x 2 conditions, one strip each
