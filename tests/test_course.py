"""The course in examples/course/ runs, lesson by lesson, in quick mode, and its claims hold.

Each lesson is a plain script that ends by asserting its own claim against tinycnn; here every one
runs as a learner would run it (``python examples/course/NN_name.py``), with ``TINYCNN_QUICK=1``
(smaller sizes and fewer epochs) and its pictures sent to a temporary folder. A lesson fails the
test if it raises (its final assertions included), warns, or leaves out the pictures it promises.
"""
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

COURSE = Path(__file__).resolve().parent.parent / "examples" / "course"
LESSONS = sorted(COURSE.glob("[0-9][0-9]_*.py"))


@pytest.fixture(scope="module")
def course_output(tmp_path_factory):
    """One folder for the whole run: lesson 9 explains the model lesson 8 saved there."""
    return tmp_path_factory.mktemp("course")


@pytest.fixture(scope="module")
def lesson_runs(course_output):
    """``{lesson: future of its finished process}``: the lessons run two at a time from the first
    test on (most of a lesson is starting Python and importing, one core's work), in order; lesson 9
    first waits for lesson 8, whose model it explains."""
    env = dict(os.environ, TINYCNN_QUICK="1", TINYCNN_COURSE_OUT=str(course_output), MPLBACKEND="Agg")
    runs = {}

    def run(lesson, after=None):
        if after is not None:
            after.result()
        return subprocess.run([sys.executable, str(lesson)], cwd=course_output, env=env, capture_output=True,
                              text=True, timeout=900)

    with ThreadPoolExecutor(max_workers=2) as pool:
        for lesson in LESSONS:
            after = runs.get(COURSE / "08_training_the_reference_model.py") if lesson.name.startswith("09") else None
            runs[lesson] = pool.submit(run, lesson, after)
        yield runs


def test_the_course_has_ten_lessons_all_in_the_index():
    assert [p.name[:2] for p in LESSONS] == [f"{k:02d}" for k in range(1, 11)]
    index = (COURSE / "README.md").read_text()
    for lesson in LESSONS:
        assert f"]({lesson.name})" in index, f"{lesson.name} is missing from examples/course/README.md"


@pytest.mark.parametrize("lesson", LESSONS, ids=[p.stem for p in LESSONS])
def test_lesson_runs_and_its_claims_hold(lesson, lesson_runs, course_output):
    source = lesson.read_text()
    assert source.startswith("# %% [markdown]\n# # Lesson "), "a lesson opens with its title cell"
    done = lesson_runs[lesson].result()
    assert done.returncode == 0, f"{lesson.name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert f"lesson {int(lesson.name[:2])}: claims hold" in done.stdout
    assert "Warning" not in done.stderr, done.stderr
    for picture in re.findall(r'save\(fig, "([^"]+\.png)"\)', source):
        data = (course_output / picture).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 2000, picture
