"""Image files that try to hurt the reader: decompression bombs, files that are not images, a symlink
loop, an unreadable folder, an empty file, a FIFO. Each is named and skipped (or refused) with its
reason; none is decoded, makes memory jump or hangs the run."""
import json
import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

from tinycnn.cli import main
from tinycnn.data import image_folder


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(path, width, height, rows=None):
    """An RGB PNG declaring ``width x height`` pixels, all black. With ``rows``, only that many rows of
    pixel data follow (the header alone is the bomb); without, every row, compressed as it is made
    (8000 x 8000 RGB is 192 MB decoded and about 200 kB on disk)."""
    rows = height if rows is None else rows
    packer = zlib.compressobj(9)
    line = bytes(1 + 3 * width)  # filter byte 0 and a row of zeros
    data = b"".join(packer.compress(line) for _ in range(rows)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", data)
                     + png_chunk(b"IEND", b""))
    return path


def hostile_folder(root):
    """Two classes of readable 6x6 images, and every kind of hostile file among them."""
    for name, value in (("benign", 40), ("malignant", 200)):
        (root / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((6, 6), value, np.uint8)).save(root / name / f"ok{i}.png")
    bomb_png(root / "benign" / "bomb.png", 100_000, 100_000, rows=1)     # Pillow's own limit refuses it
    bomb_png(root / "benign" / "big.png", 8000, 8000)                    # under Pillow's limit, over ours
    (root / "benign" / "letter.png").write_text("Dear colleague, ...")   # not an image
    (root / "benign" / "empty.jpg").write_bytes(b"")                     # zero bytes
    os.symlink("loop_b.png", root / "malignant" / "loop_a.png")          # a symlink loop
    os.symlink("loop_a.png", root / "malignant" / "loop_b.png")
    os.mkfifo(root / "malignant" / "pipe.png")                           # would block an open() forever
    (root / "malignant" / "locked").mkdir()                              # listed as unreadable (see test)
    return root


EXPECTED = {"benign/bomb.png": "decompression bomb",
            "benign/big.png": "declares 8000 x 8000 pixels, more than the 50,000,000 that are decoded",
            "benign/letter.png": "not an image file Pillow recognises",
            "benign/empty.jpg": "empty file (0 bytes)",
            "malignant/loop_a.png": "Too many levels of symbolic links",
            "malignant/loop_b.png": "Too many levels of symbolic links",
            "malignant/pipe.png": "not a regular file",
            "malignant/locked": "folder cannot be listed (PermissionError"}


def refuse_listing(monkeypatch, folder):
    """Make ``folder`` unlistable, as a folder without read permission is (root reads any folder, so
    chmod alone would not do it under CI's root user)."""
    real = os.scandir

    def scandir(path="."):
        if os.fspath(path) == os.fspath(folder):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path)
    monkeypatch.setattr(os, "scandir", scandir)


def test_image_folder_names_and_skips_every_hostile_file(tmp_path, monkeypatch):
    root = hostile_folder(tmp_path / "scans")
    refuse_listing(monkeypatch, root / "malignant" / "locked")
    with pytest.warns(UserWarning, match=r"skipped 8 file\(s\) that cannot be read as images") as caught:
        source = image_folder(root, image_size=6, color_mode="grayscale")
    skipped = {os.path.relpath(path, root): reason for path, reason in source.skipped}
    assert set(skipped) == set(EXPECTED)
    for name, reason in EXPECTED.items():
        assert reason in skipped[name], (name, skipped[name])
    assert "bomb.png" in str(caught[0].message) and "pipe.png" in str(caught[0].message)
    x, y = source.load()
    assert x.shape == (4, 6, 6, 1) and list(y) == [0, 0, 1, 1]


def test_predict_over_hostile_files_names_each_and_predicts_the_rest(tmp_path, monkeypatch, capsys):
    from tinycnn.layers import Conv2D, Dense, GlobalAveragePooling2D
    from tinycnn.models import Sequential
    root = hostile_folder(tmp_path / "scans")
    refuse_listing(monkeypatch, root / "malignant" / "locked")
    model = Sequential([Conv2D(2, 3, input_shape=(6, 6, 1)), GlobalAveragePooling2D(), Dense(2, activation="softmax")])
    model.build()
    model.save(tmp_path / "model.npz")
    csv_path = tmp_path / "out.csv"
    assert main(["predict", str(tmp_path / "model.npz"), str(root), "--out", str(csv_path)]) == 1
    err = capsys.readouterr().err
    for name, reason in EXPECTED.items():
        assert any(name in line and reason in line for line in err.splitlines()), name
    rows = csv_path.read_text().splitlines()[1:]
    assert sum(1 for row in rows if row.endswith(",")) == 4  # the four good images, no error column


MEASURE = """
import json, resource, sys, warnings
from PIL import Image
Image.MAX_IMAGE_PIXELS = None  # Pillow's own guard off: tinycnn's limit alone must hold
from tinycnn.data import image_folder
from tinycnn.data._imaging import read_image
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    source = image_folder(sys.argv[1], image_size=6, color_mode="grayscale")
errors = []
for name in ("bomb.png", "big.png"):
    try:
        read_image(sys.argv[1] + "/benign/" + name, (6, 6), "grayscale")
    except OSError as e:
        errors.append(str(e))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"grew_kib": after - before, "skipped": [p for p, _ in source.skipped], "errors": errors}))
"""


def test_bombs_are_refused_before_decoding_even_without_pillows_guard(tmp_path):
    root = tmp_path / "scans"
    for name in ("benign", "malignant"):
        (root / name).mkdir(parents=True)
        Image.fromarray(np.zeros((6, 6), np.uint8)).save(root / name / "ok.png")
    bomb_png(root / "benign" / "bomb.png", 100_000, 100_000, rows=1)  # 30 GB decoded
    bomb_png(root / "benign" / "big.png", 8000, 8000)                 # 192 MB decoded
    run = subprocess.run([sys.executable, "-c", MEASURE, str(root)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert sorted(os.path.basename(p) for p in result["skipped"]) == ["big.png", "bomb.png"]
    assert len(result["errors"]) == 2
    assert all("more than the 50,000,000 that are decoded" in e for e in result["errors"])
    assert result["grew_kib"] < 50 * 1024  # decoding either would take 192 MB or more
