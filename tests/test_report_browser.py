"""report.html in a real browser: headless Chromium (Debian's `chromium`) loads the page, every image decodes
(naturalWidth > 0) and the console stays clean. Skipped where no Chromium is installed.

The browser is driven over the DevTools pipe (microdoppler_finetune.report.browser): no websocket, no port."""
import subprocess
import sys

import pytest

from microdoppler_finetune.report.browser import check_page, find_chromium
from microdoppler_finetune.report.example import make_example_run
from microdoppler_finetune.report.summary import write_report

pytestmark = pytest.mark.skipif(find_chromium() is None, reason="no Chromium (apt-get install chromium)")


def test_every_image_decodes_in_chromium_without_console_errors(tmp_path):
    work = make_example_run(tmp_path / "work")
    write_report(work, [{"stage": "setup", "seconds": 1.0}], mode="demo", command="c", preset="cpu_demo",
                 stages=("setup", "vae"))
    shot = tmp_path / "page.png"
    result = check_page(work / "report.html", screenshot=str(shot))
    html = (work / "report.html").read_text()
    assert result.images == html.count("<img ") and result.images >= 20
    assert result.broken == [] and result.errors == []
    assert result.title == "Micro-Doppler pipeline report" and result.height > 2000
    from PIL import Image

    with Image.open(shot) as image:
        assert image.width == 1280 and image.height == min(result.height, 16000)


def test_a_fresh_process_gets_the_devtools_pipe_on_fds_3_and_4(tmp_path):
    """In a new process os.pipe() may return exactly 3 and 4; the checker must still hand Chromium its pipe."""
    page = tmp_path / "ok.html"
    page.write_text("<!DOCTYPE html><html><head><title>ok</title></head><body><p>ok</p></body></html>")
    code = ("import sys; from microdoppler_finetune.report.browser import check_page; "
            "r = check_page(sys.argv[1]); print(r.title, len(r.errors))")
    done = subprocess.run([sys.executable, "-c", code, str(page)], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["ok", "0"]


def test_the_checker_sees_broken_images_and_console_errors(tmp_path):
    """A page with an undecodable image, a script error and a console.error: all three are reported."""
    page = tmp_path / "bad.html"
    page.write_text("<!DOCTYPE html><html><head><title>bad</title></head><body>"
                    "<img alt=\"broken\" src=\"data:image/png;base64,iVBORw0KGgoAAAA=\">"
                    "<script>console.error('on purpose'); undefined_function();</script></body></html>")
    result = check_page(page)
    assert result.images == 1 and result.broken and "broken" in result.broken[0]
    assert any("on purpose" in e for e in result.errors)
    assert any("undefined_function" in e for e in result.errors)
