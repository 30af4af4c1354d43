"""tinycnn.data: .npz image sets, image folders (streamed in batches), splitting, standardisation, the
digits set. Every test writes its own small files under tmp_path."""
import json
import warnings

import numpy as np
import pytest
from PIL import Image

import tinycnn
from tinycnn.data import (ImageFolder, Normalizer, NpzDataset, image_folder, load_digits_images, load_npz,
                          make_lesion_images, train_val_split)


# --- load_npz -------------------------------------------------------------------------------------

def medmnist_arrays(n=(12, 4, 6), shape=(5, 6), classes=3, seed=0):
    gen = np.random.default_rng(seed)
    arrays = {}
    for split, count in zip(("train", "val", "test"), n):
        arrays[f"{split}_images"] = gen.integers(0, 256, (count,) + shape, dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(count) % classes).reshape(-1, 1).astype(np.uint8)
    return arrays


def write_npz(tmp_path, arrays, name="set.npz"):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def test_load_npz_grayscale_medmnist_layout(tmp_path):
    arrays = medmnist_arrays()
    data = load_npz(write_npz(tmp_path, arrays))
    assert isinstance(data, NpzDataset)
    for split, n in (("train", 12), ("val", 4), ("test", 6)):
        x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
        assert x.shape == (n, 5, 6, 1) and x.dtype == np.float32
        np.testing.assert_array_equal(x[..., 0] * 255, arrays[f"{split}_images"])
        assert y.shape == (n,) and y.dtype == np.int64
        np.testing.assert_array_equal(y, arrays[f"{split}_labels"][:, 0])
    assert data.num_classes == 3 and data.class_names is None and data.element_shape == (5, 6, 1)
    assert "train 12, val 4, test 6 images of 5x6x1, 3 classes" in repr(data)


def test_load_npz_rgb_train_only_with_class_names(tmp_path):
    arrays = medmnist_arrays(shape=(4, 4, 3), classes=2)
    arrays = {k: v for k, v in arrays.items() if k.startswith("train")}
    data = load_npz(write_npz(tmp_path, arrays), class_names=["benign", "malignant"])
    assert data.x_train.shape == (12, 4, 4, 3) and 0 <= data.x_train.min() and data.x_train.max() <= 1
    assert data.x_val is None and data.y_val is None and data.x_test is None and data.y_test is None
    assert data.num_classes == 2 and data.class_names == ["benign", "malignant"]


def test_load_npz_other_dtypes(tmp_path):
    arrays = medmnist_arrays(n=(4, 4, 4), shape=(2, 2), classes=2)
    arrays["train_images"] = np.full((4, 2, 2), 65535, dtype=np.uint16)  # 16-bit: divided by 65535
    arrays["val_images"] = np.full((4, 2, 2), 0.25, dtype=np.float64)    # floats in [0, 1]: kept
    arrays["test_labels"] = np.array([0.0, 1.0, 1.0, 0.0])               # integral floats: fine
    data = load_npz(write_npz(tmp_path, arrays))
    assert data.x_train.max() == 1.0 and data.x_val.max() == np.float32(0.25) and data.y_test.dtype == np.int64


def test_load_npz_num_classes_and_missing_class_warning(tmp_path):
    arrays = medmnist_arrays(classes=2)
    with pytest.warns(UserWarning, match=r"class\(es\) \[2\] have no training images"):
        data = load_npz(write_npz(tmp_path, arrays), num_classes=3)
    assert data.num_classes == 3
    with pytest.raises(ValueError, match=r"'train_labels' holds label 2 \(at index 2\), out of range for 2 classes"):
        load_npz(write_npz(tmp_path, medmnist_arrays(classes=3)), class_names=["a", "b"])


def _with(**changes):
    arrays = medmnist_arrays()
    for key, value in changes.items():
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value
    return arrays


@pytest.mark.parametrize("arrays, message", [
    (_with(train_labels=None), r"missing key 'train_labels' \(the file holds \['test_images', 'test_labels', "
                               r"'train_images', 'val_images', 'val_labels'\]\)"),
    (_with(val_labels=None), r"missing key 'val_labels': the file holds 'val_images' but not 'val_labels'"),
    (_with(train_labels=np.zeros((11, 1), np.uint8)), r"'train_labels' has 11 labels but 'train_images' has 12"),
    (_with(val_labels=np.array([0, 1, -1, 2])), r"'val_labels' holds a negative label \(-1 at index 2\)"),
    (_with(test_labels=np.array([0, 1, 1.5, 2, 0, 1])), r"'test_labels' holds a non-integer label \(np.float64\(1.5\)"
                                                        r"|'test_labels' holds a non-integer label \(1.5"),
    (_with(test_labels=np.array(["a"] * 6)), r"'test_labels' has dtype <U1; expected integer class labels"),
    (_with(train_labels=np.zeros((12, 3))), r"'train_labels' has shape \(12, 3\): 3 values per image"),
    (_with(train_images=np.zeros((12, 30), np.uint8)), r"'train_images' has shape \(12, 30\); expected grayscale"),
    (_with(train_images=np.zeros((12, 4, 4, 4, 4), np.uint8)), r"'train_images' has shape \(12, 4, 4, 4, 4\)"),
    (_with(train_images=np.zeros((12, 8, 8, 8), np.uint8)), r"3-D volume set"),
    (_with(train_images=np.array(["x"] * 12)), r"'train_images' has dtype <U1; expected numeric images"),
    (_with(val_images=np.zeros((4, 7, 7), np.uint8)), r"'val_images' holds images of shape \(7, 7, 1\) but "
                                                      r"'train_images' holds \(5, 6, 1\)"),
    (_with(train_images=np.full((12, 5, 6), 3.0)), r"float values in \[3, 3\]; float images must lie in \[0, 1\]"),
    (_with(train_images=np.full((12, 5, 6), 300)), r"int64 values in \[300, 300\]; expected 8-bit values"),
    (_with(train_images=np.zeros((0, 5, 6), np.uint8), train_labels=np.zeros((0, 1))), r"holds no images"),
    (_with(train_labels=np.zeros((12, 1)), val_labels=np.zeros(4), test_labels=np.zeros(6)), r"every label is 0"),
])
def test_load_npz_bad_contents(tmp_path, arrays, message):
    path = write_npz(tmp_path, arrays)
    with pytest.raises(ValueError, match=r"^load_npz\('.*set\.npz'\): .*" + f"(?:{message})"):
        load_npz(path)


def test_load_npz_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"load_npz\('.*nothing\.npz'\): no such file"):
        load_npz(tmp_path / "nothing.npz")
    text = tmp_path / "notes.npz"
    text.write_text("these are not arrays")
    with pytest.raises(ValueError, match=r"notes\.npz'\): not a readable \.npz archive"):
        load_npz(text)
    good = write_npz(tmp_path, medmnist_arrays(n=(200, 50, 50), shape=(28, 28)))
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"truncated\.npz'\): not a readable \.npz archive .*truncated"):
        load_npz(truncated)
    single = tmp_path / "single.npy"
    np.save(single, np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"holds a single array of shape \(3, 4\) \(an \.npy file\)"):
        load_npz(single)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, train_images=np.zeros((2, 3, 3), np.uint8), train_labels=np.array([[0], None], dtype=object))
    with pytest.raises(ValueError, match=r"entry 'train_labels' cannot be read \(ValueError: Object arrays"):
        load_npz(pickled)
    with pytest.raises(IsADirectoryError, match=r"this is a folder, not an \.npz file"):
        load_npz(tmp_path)


def test_load_npz_bad_arguments(tmp_path):
    path = write_npz(tmp_path, medmnist_arrays())
    with pytest.raises(ValueError, match=r"invalid value for argument `num_classes`: expected an int >= 2, received 1"):
        load_npz(path, num_classes=1)
    with pytest.raises(ValueError, match=r"argument `class_names`: expected a list of at least two distinct str"):
        load_npz(path, class_names=["a", "a"])
    with pytest.raises(ValueError, match=r"`num_classes`=4 disagrees with the 3 `class_names`"):
        load_npz(path, num_classes=4, class_names=["a", "b", "c"])


# --- image_folder ---------------------------------------------------------------------------------

def save(path, array, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


def solid(h, w, color):
    return np.broadcast_to(np.array(color, dtype=np.uint8), (h, w, len(color))).copy()


@pytest.fixture
def folder(tmp_path):
    """benign: 3 readable images + 1 text file named .png; malignant: 3 readable (one nested) + 1 truncated JPEG;
    hidden files and folders that must be ignored; a file at the top level that is not a class."""
    root = tmp_path / "scans"
    gen = np.random.default_rng(0)
    save(root / "benign" / "a.png", solid(10, 20, (255, 0, 51)))                            # RGB, wide
    save(root / "benign" / "b.jpg", gen.integers(0, 256, (30, 30), dtype=np.uint8), quality=95)  # grayscale JPEG
    save(root / "benign" / "c.bmp", solid(8, 8, (0, 255, 0)))
    (root / "benign" / "notes.png").write_text("not an image at all")
    save(root / "malignant" / "d.png", np.dstack([solid(12, 12, (10, 20, 30)), np.full((12, 12, 1), 128, np.uint8)]))
    save(root / "malignant" / "deeper" / "e.png", solid(64, 64, (0, 0, 255)))
    Image.fromarray(solid(5, 5, (200, 100, 0))).convert("P").save(root / "malignant" / "f.gif")
    whole = save(tmp_path / "whole.jpg", gen.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    (root / "malignant" / "g_truncated.jpg").write_bytes(whole.read_bytes()[:whole.stat().st_size * 2 // 3])
    (root / "malignant" / ".DS_Store").write_bytes(b"\x00\x01junk")
    save(root / "malignant" / ".hidden" / "h.png", solid(4, 4, (1, 2, 3)))
    save(root / ".thumbnails" / "i.png", solid(4, 4, (1, 2, 3)))
    (root / "README.txt").write_text("one subfolder per class")
    return root


def scan(path, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return image_folder(path, **kwargs)


def test_image_folder_scans_classes_files_and_skips(folder):
    with pytest.warns(UserWarning) as caught:
        source = image_folder(folder, image_size=(4, 8))
    assert isinstance(source, ImageFolder)
    assert source.class_names == ["benign", "malignant"] and source.num_classes == 2
    names = [p[len(str(folder)) + 1:] for p in source.file_paths]
    assert names == ["benign/a.png", "benign/b.jpg", "benign/c.bmp", "malignant/d.png", "malignant/f.gif",
                     "malignant/deeper/e.png"]
    np.testing.assert_array_equal(source.labels, [0, 0, 0, 1, 1, 1])
    assert source.labels.dtype == np.int64 and len(source) == 6 and source.element_shape == (4, 8, 3)
    np.testing.assert_array_equal(source.class_counts, [3, 3])
    skipped = {p[len(str(folder)) + 1:]: reason for p, reason in source.skipped}
    assert set(skipped) == {"benign/notes.png", "malignant/g_truncated.jpg"}
    assert skipped["benign/notes.png"] == "not an image file Pillow recognises (UnidentifiedImageError)"
    assert "image file is truncated" in skipped["malignant/g_truncated.jpg"]
    message = str(caught[0].message)
    assert "skipped 2 file(s) that cannot be read as images" in message
    assert "notes.png" in message and "g_truncated.jpg" in message
    assert "6 images, 2 classes ['benign', 'malignant'], 4x8x3, 2 skipped" in repr(source)
    text = source.summary()
    assert "0: benign" in text and "3 images" in text and "2 file(s) that cannot be read as images" in text
    assert "g_truncated.jpg: OSError" in text


def test_image_folder_pixels_sizes_and_color_modes(folder):
    source = scan(folder, image_size=(4, 8))
    x, y = source.load()
    assert x.shape == (6, 4, 8, 3) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    np.testing.assert_allclose(x[0], np.broadcast_to([1.0, 0.0, 0.2], (4, 8, 3)), atol=1e-6)  # resized solid
    np.testing.assert_allclose(x[3], np.broadcast_to([10 / 255, 20 / 255, 30 / 255], (4, 8, 3)), atol=1e-6)  # RGBA
    with Image.open(folder / "malignant" / "f.gif") as gif:
        palette_rgb = np.asarray(gif.convert("RGB"))[0, 0] / 255
    np.testing.assert_allclose(x[4], np.broadcast_to(palette_rgb, (4, 8, 3)), atol=1e-6)  # palette GIF
    assert np.allclose(x[1][..., 0], x[1][..., 1])  # grayscale file, three equal channels
    gray = scan(folder, image_size=6, color_mode="grayscale")
    xg, _ = gray.load()
    assert gray.element_shape == (6, 6, 1) and xg.shape == (6, 6, 6, 1)
    expected = Image.fromarray(solid(6, 6, (255, 0, 51))).convert("L").getpixel((0, 0)) / 255  # Pillow's luma
    np.testing.assert_allclose(xg[0], expected, atol=1e-6)
    rgba = scan(folder, image_size=(3, 3), color_mode="rgba")
    xa, _ = rgba.load()
    assert xa.shape == (6, 3, 3, 4)
    np.testing.assert_allclose(xa[3, ..., 3], 128 / 255, atol=1e-6)
    np.testing.assert_allclose(xa[0, ..., 3], 1.0)


def test_image_folder_resize_keeps_height_and_width_apart(tmp_path):
    image = np.zeros((10, 20), dtype=np.uint8)
    image[:, 10:] = 255  # left half black, right half white
    save(tmp_path / "f" / "a" / "x.png", image)
    save(tmp_path / "f" / "b" / "y.png", image.T.copy())  # top half black, bottom white
    x, _ = image_folder(tmp_path / "f", image_size=(5, 4), color_mode="grayscale").load()
    assert x.shape == (2, 5, 4, 1)
    assert (x[0, :, 0, 0] == 0).all() and (x[0, :, -1, 0] == 1).all()
    assert (x[1, 0, :, 0] == 0).all() and (x[1, -1, :, 0] == 1).all()


def test_image_folder_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
    save(tmp_path / "f" / "a" / "x.png", np.full((4, 4), 65535, dtype=np.uint16))
    save(tmp_path / "f" / "b" / "y.png", np.full((4, 4), 32768, dtype=np.uint16))
    x, _ = image_folder(tmp_path / "f", image_size=(4, 4), color_mode="grayscale").load()
    np.testing.assert_allclose(x[:, 0, 0, 0], [1.0, 32768 / 65535], rtol=1e-6)


def test_image_folder_streams_batches(folder):
    source = scan(folder, image_size=(4, 4), batch_size=4, seed=7)
    x_all, y_all = source.load()
    batches = list(source.iter_batches())
    assert [b[0].shape for b in batches] == [(4, 4, 4, 3), (2, 4, 4, 3)]
    assert all(b[0].dtype == np.float32 and b[1].dtype == np.int64 for b in batches)
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), x_all)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), y_all)
    # Shuffled with a seed: a permutation of the samples, the same every time.
    one = list(source.iter_batches(batch_size=5, shuffle=True, seed=3))
    two = list(source.iter_batches(5, True, 3))
    for (xa, ya), (xb, yb) in zip(one, two):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    x_shuffled = np.concatenate([b[0] for b in one])
    order = [int(np.flatnonzero((x_all == img).all(axis=(1, 2, 3)))[0]) for img in x_shuffled]
    assert sorted(order) == list(range(6)) and order != list(range(6))
    # Without a seed, every pass draws a new order from the source's own (seeded) generator.
    passes = [np.concatenate([b[1] for b in source.iter_batches(shuffle=True)]) for _ in range(6)]
    assert any(not np.array_equal(passes[0], p) for p in passes[1:])
    again = scan(folder, image_size=(4, 4), batch_size=4, seed=7)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in again.iter_batches(shuffle=True)]), passes[0])


def test_image_folder_split_is_stratified_and_disjoint(tmp_path):
    for k in range(10):
        save(tmp_path / "f" / ("a" if k < 6 else "b") / f"{k}.png", solid(3, 3, (k * 20, 0, 0)))
    source = image_folder(tmp_path / "f", image_size=(3, 3))
    train, val = source.split(validation_fraction=0.4, seed=0)
    assert len(train) == 6 and len(val) == 4
    assert set(train.file_paths).isdisjoint(val.file_paths)
    assert sorted(train.file_paths + val.file_paths) == sorted(source.file_paths)
    assert list(val.class_counts) == [2, 2] and list(train.class_counts) == [4, 2]
    assert "(validation subset)" in repr(val) and val.element_shape == (3, 3, 3)
    x, y = val.load()
    assert x.shape == (4, 3, 3, 3) and list(y) == [val.labels[i] for i in range(4)]


def test_image_folder_class_names_choose_and_order(folder):
    source = scan(folder, image_size=4, class_names=["malignant", "benign"])
    assert source.class_names == ["malignant", "benign"] and list(source.labels) == [0, 0, 0, 1, 1, 1]
    with pytest.raises(ValueError, match=r"`class_names` \['cyst'\] are not subfolders of the folder "
                                         r"\(its subfolders: \['benign', 'malignant'\]\)"):
        image_folder(folder, class_names=["benign", "cyst"])


def test_image_folder_verify_false_reports_a_damaged_file_when_read(folder):
    source = scan(folder, image_size=4, verify=False)
    assert [p for p, _ in source.skipped] == [str(folder / "benign" / "notes.png")]  # the header check still runs
    with pytest.raises(OSError, match=r"cannot read '.*g_truncated\.jpg': OSError: image file is truncated.*only "
                                      r"read its header"):
        source.load()


def test_image_folder_feeds_a_model(folder):
    from tinycnn.layers import Conv2D, Dense, GlobalAveragePooling2D, RandomFlip
    source = scan(folder, image_size=(8, 8), batch_size=4, shuffle=True, seed=0)
    model = tinycnn.Sequential([RandomFlip(seed=0), Conv2D(4, 3, activation="relu"), GlobalAveragePooling2D(),
                                Dense(2, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(source, epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2 and np.isfinite(history.history["loss"]).all()
    assert model.predict(source, verbose=0).shape == (6, 2)


def test_image_folder_errors_name_folder_and_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"image_folder\('.*missing'\): the folder does not exist"):
        image_folder(tmp_path / "missing")
    file = tmp_path / "file.png"
    save(file, solid(2, 2, (0, 0, 0)))
    with pytest.raises(NotADirectoryError, match=r"file\.png'\): this is a file, not a folder"):
        image_folder(file)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty'\): no class subfolders \(it is empty\)"):
        image_folder(tmp_path / "empty")
    save(tmp_path / "flat" / "x.png", solid(2, 2, (0, 0, 0)))
    with pytest.raises(ValueError, match=r"flat'\): no class subfolders \(only 1 file\(s\) directly in it\); put "
                                         r"each class's images in a subfolder"):
        image_folder(tmp_path / "flat")
    save(tmp_path / "one" / "only" / "x.png", solid(2, 2, (0, 0, 0)))
    with pytest.raises(ValueError, match=r"one'\): only one class subfolder \('only'\); a classifier needs at least "
                                         r"two classes"):
        image_folder(tmp_path / "one")
    save(tmp_path / "two" / "a" / "x.png", solid(2, 2, (0, 0, 0)))
    (tmp_path / "two" / "b").mkdir()
    with pytest.raises(ValueError, match=r"class folder '.*two/b' holds no readable images; it is empty"):
        image_folder(tmp_path / "two")
    (tmp_path / "two" / "b" / "x.jpg").write_text("text")
    with pytest.raises(ValueError, match=r"class folder '.*two/b' holds no readable images; 1 file\(s\) could not be "
                                         r"read, e\.g\. .*x\.jpg \(not an image file Pillow recognises"):
        image_folder(tmp_path / "two")


@pytest.mark.parametrize("kwargs, message", [
    (dict(image_size=(64, 0)), r"argument `image_size`: expected \(height, width\) as two positive ints, "
                               r"received \(64, 0\)"),
    (dict(image_size="big"), r"argument `image_size`: .* received 'big'"),
    (dict(color_mode="RGB"), r"argument `color_mode`: expected one of \['grayscale', 'rgb', 'rgba'\], received 'RGB'"),
    (dict(interpolation="cubic"), r"argument `interpolation`: expected one of \['bilinear', 'nearest'"),
    (dict(batch_size=0), r"argument `batch_size`: expected a positive int, received 0"),
    (dict(shuffle="yes"), r"argument `shuffle`: expected True or False, received 'yes'"),
    (dict(seed=-3), r"argument `seed`: expected None or a non-negative int, received -3"),
    (dict(class_names="benign"), r"argument `class_names`: expected a list of distinct subfolder names"),
])
def test_image_folder_bad_arguments(folder, kwargs, message):
    with pytest.raises(ValueError, match=r"^image_folder\('.*scans'\): invalid value for " + message):
        image_folder(folder, **kwargs)


def test_iter_batches_bad_arguments(folder):
    source = scan(folder, image_size=4)
    with pytest.raises(ValueError, match=r"iter_batches: invalid value for argument `batch_size`"):
        source.iter_batches(batch_size=-1)
    with pytest.raises(ValueError, match=r"iter_batches: invalid value for argument `seed`"):
        source.iter_batches(shuffle=True, seed="x")


# --- train_val_split ------------------------------------------------------------------------------

def test_train_val_split_stratified_and_repeatable():
    x = np.arange(40 * 2 * 2).reshape(40, 2, 2, 1).astype(np.float32)
    y = np.array([0] * 30 + [1] * 10)
    (x_tr, y_tr), (x_val, y_val) = train_val_split(x, y, validation_fraction=0.2, seed=1)
    assert x_tr.shape == (32, 2, 2, 1) and x_val.shape == (8, 2, 2, 1)
    assert list(np.bincount(y_val)) == [6, 2] and list(np.bincount(y_tr)) == [24, 8]
    assert set(x_tr[:, 0, 0, 0]).isdisjoint(x_val[:, 0, 0, 0])
    np.testing.assert_array_equal(y_tr, y[(x_tr[:, 0, 0, 0] // 4).astype(int)])  # x and y stay paired
    (x_tr2, _), _ = train_val_split(x, y, validation_fraction=0.2, seed=1)
    np.testing.assert_array_equal(x_tr, x_tr2)
    onehot = tinycnn.to_categorical(y, 2)
    (_, oh_tr), (_, oh_val) = train_val_split(x, onehot, validation_fraction=0.25, seed=0)
    assert oh_tr.shape == (30, 2) and list(oh_val.sum(axis=0)) == [8, 2]
    (_, _), (_, y_val) = train_val_split(x, y, validation_fraction=0.1, stratify=False, seed=0)
    assert y_val.shape == (4,)


@pytest.mark.parametrize("args, kwargs, message", [
    ((np.zeros((10, 2)), np.arange(10) % 2), dict(validation_fraction=1.0),
     r"argument `validation_fraction`: expected a float in \(0, 1\), received 1\.0"),
    ((np.zeros((10, 2)), np.arange(10) % 2), dict(validation_fraction=True), r"received True"),
    ((np.zeros((10, 2)), np.arange(9) % 2), {}, r"the same number of samples, received shapes \(10, 2\) and \(9,\)"),
    ((np.zeros((10, 2)), np.array([0] * 9 + [1])), {}, r"class 1 has only 1 sample; a stratified split needs at least "
                                                       r"2 per class"),
    ((np.zeros((10, 2)), np.arange(10) % 5), dict(validation_fraction=0.2),
     r"gives 8 training and 2 validation samples, but a stratified split needs at least one per class \(5 classes\)"),
    ((np.zeros((2, 2)), np.arange(2)), dict(validation_fraction=0.9, stratify=False),
     r"validation_fraction=0.9 of 2 samples leaves 0 for training and 2 for validation; each part needs at least one"),
    ((np.zeros((10, 2)), np.arange(10) % 2), dict(seed=-1), r"argument `seed`"),
])
def test_train_val_split_errors(args, kwargs, message):
    with pytest.raises(ValueError, match=r"^train_val_split: .*" + message):
        train_val_split(*args, **kwargs)


# --- Normalizer -----------------------------------------------------------------------------------

def test_normalizer_fits_per_channel_and_saves_as_json(tmp_path):
    gen = np.random.default_rng(0)
    x = (gen.standard_normal((50, 4, 5, 3)) * [1.0, 2.0, 0.5] + [0.2, -1.0, 3.0]).astype(np.float32)
    x[..., 1] = 7.0  # a constant channel: std 0, divided by epsilon instead, no NaN
    norm = Normalizer().fit(x, batch_size=7)  # several blocks: the pairwise update must equal one pass
    np.testing.assert_allclose(norm.mean, x.astype(np.float64).mean(axis=(0, 1, 2)), rtol=1e-12)
    np.testing.assert_allclose(norm.std, x.astype(np.float64).std(axis=(0, 1, 2)), rtol=1e-10, atol=1e-12)
    z = norm.transform(x)
    assert z.dtype == np.float32 and np.isfinite(z).all()
    np.testing.assert_allclose(z[..., [0, 2]].mean(axis=(0, 1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(z[..., [0, 2]].std(axis=(0, 1, 2)), 1, atol=1e-4)
    np.testing.assert_allclose(norm.inverse_transform(z), x, rtol=1e-5, atol=1e-5)
    config = json.loads(json.dumps(norm.get_config()))
    assert set(config) == {"mean", "std", "epsilon"} and all(isinstance(v, float) for v in config["mean"])
    np.testing.assert_array_equal(Normalizer.from_config(config).transform(x), z)


def test_normalizer_fits_on_a_batch_source(folder):
    source = scan(folder, image_size=(4, 4), batch_size=4)
    x, _ = source.load()
    streamed = Normalizer().fit(source, batch_size=4)
    whole = Normalizer().fit(x)
    np.testing.assert_allclose(streamed.mean, whole.mean, rtol=1e-12)
    np.testing.assert_allclose(streamed.std, whole.std, rtol=1e-10)


def test_normalizer_errors():
    with pytest.raises(ValueError, match=r"Normalizer.transform: the Normalizer is not fitted yet; call fit"):
        Normalizer().transform(np.zeros((2, 3, 3, 1)))
    norm = Normalizer().fit(np.random.default_rng(0).random((4, 3, 3, 3)))
    with pytest.raises(ValueError, match=r"fitted on 3 channel\(s\), received x with shape \(2, 3, 3, 1\)"):
        norm.transform(np.zeros((2, 3, 3, 1)))
    with pytest.raises(ValueError, match=r"argument `epsilon`: expected a float > 0, received 0"):
        Normalizer(epsilon=0)
    with pytest.raises(ValueError, match=r"equally long lists of finite floats"):
        Normalizer(mean=[0.5, 0.5], std=[0.1])
    with pytest.raises(ValueError, match=r"Normalizer.fit: the images hold NaN"):
        Normalizer().fit(np.full((2, 2, 2, 1), np.nan))


# --- built-in sets --------------------------------------------------------------------------------

def test_load_digits_images():
    x, y = load_digits_images()
    assert x.shape == (1797, 8, 8, 1) and x.dtype == np.float32 and x.min() == 0 and x.max() == 1
    assert y.dtype == np.int64 and set(np.unique(y)) == set(range(10))
    x16, y16 = load_digits_images(image_size=16, channels=3)
    assert x16.shape == (1797, 16, 16, 3) and 0 <= x16.min() and x16.max() <= 1
    np.testing.assert_array_equal(y16, y)
    np.testing.assert_array_equal(x16[..., 0], x16[..., 2])
    assert abs(float(x16.mean()) - float(x.mean())) < 0.02  # resizing keeps the overall brightness
    with pytest.raises(ValueError, match=r"load_digits_images: invalid value for argument `channels`"):
        load_digits_images(channels=2)


def test_make_lesion_images_still_exported():
    x, y = make_lesion_images(n=4, image_size=8, seed=0)
    assert x.shape == (4, 8, 8, 3) and y.shape == (4,)


# --- matching a folder to a model's classes -------------------------------------------------------

def test_with_class_names_follows_the_models_order_by_name(tmp_path):
    for name, value in (("healthy", 0), ("Parasitized", 255)):
        for i in range(2):
            save(tmp_path / "f" / name / f"{i}.png", np.full((3, 3), value, dtype=np.uint8))
    source = image_folder(tmp_path / "f", image_size=3, color_mode="grayscale")
    assert source.class_names == ["Parasitized", "healthy"]  # sorted: upper case first
    model_classes = ["uninfected", "parasitized"]
    with pytest.raises(ValueError, match=r"the subfolders \['Parasitized', 'healthy'\] do not match the model's "
                                         r"classes \['uninfected', 'parasitized'\] \(no class for \['healthy'\]\).*"
                                         r"--class-map healthy=CLASS"):
        source.with_class_names(model_classes)
    mapped = source.with_class_names(model_classes, class_map={"HEALTHY": "Uninfected"})  # case ignored
    assert mapped.class_names == model_classes and mapped.class_folders == ["healthy", "Parasitized"]
    x, y = mapped.load()
    np.testing.assert_array_equal(y, [0, 0, 1, 1])
    np.testing.assert_array_equal(x[:, 0, 0, 0], [0, 0, 1, 1])  # label 0 = the dark 'healthy' images
    assert "0: uninfected" in mapped.summary() and "(subfolder 'healthy')" in mapped.summary()
    assert source.class_names == ["Parasitized", "healthy"]  # the original is untouched
    # A class the folder lacks is allowed (labels stay right); a subfolder the model lacks is not.
    three = source.with_class_names(["healthy", "parasitized", "other"])
    assert list(three.class_counts) == [2, 2, 0] and three.class_folders[2] is None
    with pytest.raises(ValueError, match=r"subfolders \['Parasitized', 'healthy'\] all match the model's class "
                                         r"'healthy'"):
        source.with_class_names(["healthy", "x"], class_map={"Parasitized": "healthy"})
    with pytest.raises(ValueError, match=r"`class_map` names subfolder 'sick'"):
        source.with_class_names(model_classes, class_map={"sick": "parasitized"})
    with pytest.raises(ValueError, match=r"maps 'healthy' to 'normal', which is not one of the model's classes"):
        source.with_class_names(model_classes, class_map={"healthy": "normal"})
    with pytest.raises(ValueError, match=r"`class_names`: expected a list of at least two distinct str"):
        source.with_class_names("healthy")


@pytest.mark.parametrize("splits", [("train", "valid"), ("Training", "test")])
def test_split_named_subfolders_are_refused_as_classes(tmp_path, splits):
    for split in splits:
        save(tmp_path / "f" / split / "a" / "0.png", np.zeros((2, 2), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"named like data splits, not classes.* --data .*f/" + splits[0]):
        image_folder(tmp_path / "f")
    assert image_folder(tmp_path / "f", class_names=list(splits)).class_names == list(splits)  # when meant
