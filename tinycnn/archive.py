"""Model files as plain data: one NumPy ``.npz`` archive of JSON text and number arrays.

This module knows archives, not models: :func:`write` stores a JSON-able description and a dict
of arrays; :class:`ArchiveReader` reads them back while treating the file as untrusted input.
``Model.save`` and ``tinycnn.saving.load_model`` decide what goes in.

The file is an ordinary ``.npz`` (a zip of ``.npy`` arrays); the description is the entry
``__config__``, UTF-8 JSON stored as a uint8 array.

Writing is atomic: a temporary file in the same folder, flushed to disk, renamed over the target,
so an interrupted save never leaves a half-written file where a good one stood.

Reading checks every claim the file makes *before* acting on it:

1. **No code.** Arrays are plain numbers; an array of Python objects (which NumPy would unpickle,
   and unpickling can run any code) is refused.
2. **No allocation on the file's word.** A ``.npy`` entry starts with a header announcing its shape
   and dtype; a hostile file can announce 10^12 elements. The header is read and checked first:
   its length (at most :data:`MAX_HEADER_BYTES`), its dtype (plain numbers), its shape against the
   shape the caller expects, and its byte count against the entry's real size. Only when all of
   that agrees is anything allocated.
3. **No zip bombs.** A zip entry declares its unpacked size; the total may not exceed
   :data:`MAX_COMPRESSION_RATIO` times the packed size (tinycnn writes uncompressed entries, and
   trained weights hardly compress). Entries must be stored or deflated, the two methods NumPy
   writes: ``zipfile`` unpacks a chunk of deflate at most to the size it is asked for, but a chunk of
   bzip2 or LZMA all at once, and 4 KB of bzip2 can unpack to gigabytes whatever the entry declares.
   The JSON description is capped at :data:`MAX_CONFIG_BYTES`: parsed, each byte can become up to
   about 25 bytes of Python objects (``[{},{},...]``: a 64-byte dict per 3 bytes of text).

Anything wrong raises :class:`ModelFileError` (a ``ValueError``) whose message starts with the file
name and says what is wrong.
"""
import io
import json
import math
import os
import tempfile
import tokenize
import zipfile
import zlib

import numpy as np

FORMAT = "tinycnn-model"

#: Largest description (JSON) a model file may carry: at most about 25 MB once parsed (module
#: docstring). ResNet-18's takes 18 KB, about 260 bytes a layer.
MAX_CONFIG_BYTES = 2**20
#: Largest ``.npy`` header read; NumPy's own default limit. Real headers are about 128 bytes.
MAX_HEADER_BYTES = 10_000
#: Largest ratio of declared unpacked size to packed size over the whole archive.
MAX_COMPRESSION_RATIO = 100
#: ... plus this many bytes, so that a small file of zeros (an untrained bias) is not refused.
_RATIO_SLACK = 2**20
_NPY_MAGIC = b"\x93NUMPY"


class ModelFileError(ValueError):
    """A model file that cannot be loaded: truncated, foreign, hostile or inconsistent."""


def write(filepath, config, arrays, where="save"):
    """Write ``config`` (JSON-able) and ``arrays`` (``{name: ndarray}``) to ``filepath`` atomically.

    The new file replaces an existing one in a single rename, so a reader (or a crash) sees either
    the old file or the new one, never half of each. It keeps the old file's permissions, or gets
    the usual ones for a new file (``0o666`` less the umask).
    """
    try:
        text = json.dumps(dict(config, format=FORMAT))
    except (TypeError, ValueError) as e:
        raise TypeError(f"{where}: the model's configuration or `metadata` is not plain JSON data ({e}); use "
                        f"str, int, float, bool, list and dict values") from None
    data = text.encode("utf-8")
    if len(data) > MAX_CONFIG_BYTES:
        raise ValueError(f"{where}: the model's configuration takes {len(data):,} bytes of JSON, more than the "
                         f"{MAX_CONFIG_BYTES:,} that load_model accepts; keep large data out of `model.metadata`")
    entries = {"__config__": np.frombuffer(data, dtype=np.uint8), **arrays}
    write_atomically(filepath, lambda f: np.savez(f, **entries), suffix=".npz")


def write_atomically(filepath, fill, suffix=""):
    """Write a file so that a crash leaves either the old file or the whole new one: ``fill(f)``
    writes into a temporary file in the same folder, which is flushed to disk and then renamed over
    ``filepath`` (the folder synced too). Keeps the permissions of the file it replaces."""
    filepath = os.fspath(filepath)
    folder = os.path.dirname(os.path.abspath(filepath))
    if not os.path.isdir(folder):  # else mkstemp's error names the temporary file, not the one asked for
        raise FileNotFoundError(f"cannot write {filepath}: the folder {folder} does not exist")
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            fill(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode(filepath))  # mkstemp makes files private (0o600)
        os.replace(tmp, filepath)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_folder(folder)


def _file_mode(filepath):
    """Permissions for the saved file: those of the file it replaces, else 0o666 less the umask."""
    try:
        return os.stat(filepath).st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _fsync_folder(folder):
    """Make the rename itself durable (POSIX). Where folders cannot be opened (Windows), do nothing."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class ArchiveReader:
    """An opened model file whose zip directory has been checked (see the module docstring).

    Use as a context manager::

        with ArchiveReader(path) as archive:
            config = archive.config                       # the JSON description, size-checked
            header = archive.header("layers/0/kernel", "f", expected_shape)
            kernel = archive.read("layers/0/kernel", header)

    ``archive.names`` are the entries (without ``.npy``); ``archive.fail(problem)`` makes a
    :class:`ModelFileError` naming the file.
    """

    def __init__(self, filepath):
        self.filepath = os.fspath(filepath)
        if not os.path.exists(self.filepath):
            raise FileNotFoundError(f"{self.filepath}: no such model file")
        if os.path.isdir(self.filepath):
            raise self.fail("is a folder, not a model file")
        size = os.path.getsize(self.filepath)
        if size == 0:
            raise self.fail("not a tinycnn model file: the file is empty (0 bytes)")
        with open(self.filepath, "rb") as f:
            start = f.read(len(_NPY_MAGIC))
        if start == _NPY_MAGIC:
            raise self.fail("not a tinycnn model file: it is a single .npy array, not an .npz archive")
        try:
            self._zip = zipfile.ZipFile(self.filepath)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, NotImplementedError) as e:
            if start.startswith(b"PK\x03\x04"):
                raise self.fail(f"the file starts like an .npz (zip) archive but its zip directory is missing or "
                                f"damaged: the file is truncated or corrupt ({e})") from None
            raise self.fail(f"not a tinycnn model file (not an .npz archive: {e})") from None
        try:
            self._entries = _check_entries(self._zip, size, self.fail)
            if "__config__" not in self._entries:
                held = ", ".join(sorted(self._entries)[:10]) or "nothing"
                raise self.fail(f"not a tinycnn model file (no __config__ entry; the archive holds: {held})")
            self.config = self._guard(_read_config, self._zip, self._entries["__config__"], self.fail)
        except BaseException:
            self._zip.close()
            raise

    def fail(self, problem):
        return ModelFileError(f"{self.filepath}: {problem}")

    @property
    def names(self):
        return list(self._entries)

    def header(self, name, kinds, shape=None):
        """Check entry ``name``'s ``.npy`` header (dtype kinds such as ``'f'``, ``shape``) without
        reading its data; returns what :meth:`read` needs."""
        return self._guard(_array_header, self._zip, self._entries[name], name, self.fail, kinds, shape)

    def read(self, name, header):
        """The data of entry ``name`` whose :meth:`header` was accepted: a writable native array."""
        return self._guard(_read_array, self._zip, self._entries[name], header, self.fail)

    def _guard(self, function, *args):
        """Run a reading step; a damaged archive's low-level errors become one ModelFileError. Our own
        checks raise ModelFileError; any other ValueError comes from zipfile meeting damage (a local
        header flagging a UTF-8 name that is not UTF-8 raises UnicodeDecodeError, for one)."""
        try:
            return function(*args)
        except ModelFileError:
            raise
        except (zipfile.BadZipFile, EOFError, OSError, zlib.error, NotImplementedError, RuntimeError,
                ValueError) as e:
            raise self.fail(f"the file is truncated or corrupt ({type(e).__name__}: {e})") from None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._zip.close()


#: The zip packing methods a model file may use (see the module docstring), and names for others.
_PACKINGS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
_OTHER_PACKINGS = {zipfile.ZIP_BZIP2: "bzip2", zipfile.ZIP_LZMA: "LZMA"}


def _check_entries(archive, size, fail):
    """``{name: ZipInfo}`` for the ``.npy`` entries (name without ``.npy``), after checking the zip
    directory against the file: known entry types, sizes within the file, no zip bomb."""
    entries = {}
    declared = packed = 0
    for info in archive.infolist():
        name = info.filename
        if not name.endswith(".npy"):
            raise fail(f"not a tinycnn model file (entry {name!r} is not a NumPy array (.npy))")
        key = name[:-len(".npy")]
        if key in entries:
            raise fail(f"entry '{key}' appears twice in the archive")
        if info.flag_bits & 0x1:
            raise fail(f"entry '{key}' is encrypted; tinycnn model files are not")
        if info.compress_type not in _PACKINGS:
            method = _OTHER_PACKINGS.get(info.compress_type, "an unknown method")
            raise fail(f"entry '{key}' is packed with {method} (zip method {info.compress_type}); tinycnn reads "
                       f"stored and deflated entries only, what NumPy writes (other methods can unpack to far "
                       f"more than the entry declares): refusing to unpack it")
        if info.header_offset + info.compress_size > size:
            raise fail(f"entry '{key}' reaches past the end of the file ({size:,} bytes): the file is truncated")
        if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
            raise fail(f"entry '{key}' is stored uncompressed but declares {info.file_size:,} bytes in "
                       f"{info.compress_size:,}: the zip directory is corrupt")
        declared += info.file_size
        packed += info.compress_size
        entries[key] = info
    if declared > MAX_COMPRESSION_RATIO * packed + _RATIO_SLACK:
        raise fail(f"the archive declares {declared:,} bytes of data packed into {packed:,} (a ratio of "
                   f"{declared / max(packed, 1):,.0f} to 1); a tinycnn model stays below {MAX_COMPRESSION_RATIO} "
                   f"to 1, so this looks like a zip bomb: refusing to unpack it")
    return entries


def _array_header(archive, info, what, fail, kinds, shape=None):
    """Read and check the ``.npy`` header of one entry without touching its data.

    Checks, in order: the signature and format version, the header's length (before reading it),
    the dtype (plain numbers of ``kinds``; object arrays are refused), the shape against ``shape``
    (the architecture's), and the data size the header announces against what the entry holds.

    Returns
    -------
    (shape, dtype, fortran_order, offset) with ``offset`` the size of the header in bytes.
    """
    with archive.open(info) as stream:
        prefix = stream.read(len(_NPY_MAGIC) + 2)
        if len(prefix) < len(_NPY_MAGIC) + 2 or not prefix.startswith(_NPY_MAGIC):
            raise fail(f"entry '{what}' is not a NumPy array (no .npy signature)")
        major, minor = prefix[-2], prefix[-1]
        if major not in (1, 2):
            raise fail(f"entry '{what}' uses .npy format version {major}.{minor}; tinycnn reads versions 1.0 "
                       f"and 2.0, which is what NumPy writes for numbers")
        length_field = stream.read(2 if major == 1 else 4)
        header_length = int.from_bytes(length_field, "little")
        if header_length > MAX_HEADER_BYTES:
            raise fail(f"entry '{what}' has a .npy header of {header_length:,} bytes, more than the "
                       f"{MAX_HEADER_BYTES:,} allowed (a genuine one has about 128): refusing to read it")
        header = stream.read(header_length)
    if len(length_field) + len(header) != (2 if major == 1 else 4) + header_length:
        raise fail(f"entry '{what}' ends inside its .npy header: the file is truncated or corrupt")
    read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    try:
        found, fortran, dtype = read_header(io.BytesIO(length_field + header), max_header_size=MAX_HEADER_BYTES)
    except (ValueError, SyntaxError, TypeError, RecursionError, MemoryError, tokenize.TokenError) as e:
        # TokenError: NumPy retries a header that does not parse through tokenize (for headers
        # written by Python 2), which raises it on unbalanced brackets.
        raise fail(f"entry '{what}' has a malformed .npy header ({type(e).__name__}: {e})") from None
    if dtype.hasobject:
        raise fail(f"entry '{what}' holds Python objects (a pickled object array); a tinycnn model file holds "
                   f"plain numbers only, and unpickling can run arbitrary code: refusing to load it")
    if dtype.kind not in kinds or dtype.names is not None or dtype.subdtype is not None:
        raise fail(f"entry '{what}' has dtype {dtype}; expected plain numbers of kind {_KIND_NAMES[kinds]}")
    if any(d < 0 for d in found):
        raise fail(f"entry '{what}' announces a negative shape {found}")
    if shape is not None and tuple(found) != tuple(shape):
        raise fail(f"entry '{what}' has shape {tuple(found)} in the file but the architecture needs "
                   f"{tuple(shape)}")
    data_bytes = math.prod(found) * dtype.itemsize
    offset = len(prefix) + len(length_field) + header_length
    held = info.file_size - offset
    if data_bytes != held:
        raise fail(f"entry '{what}': its header announces shape {tuple(found)} of {dtype} ({data_bytes:,} bytes) "
                   f"but the entry holds {held:,} bytes of data: the header is wrong or the entry truncated")
    return tuple(found), dtype, fortran, offset


_KIND_NAMES = {"biuf": "bool, int or float", "u": "uint8", "iu": "int", "f": "float"}


def _read_array(archive, info, header, fail):
    """The data of one entry whose header :func:`_array_header` accepted, as a writable native array."""
    shape, dtype, fortran, offset = header
    data = _read_data(archive, info, offset, math.prod(shape) * dtype.itemsize, fail)
    array = np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")
    return array.astype(dtype.newbyteorder("="), order="C")  # a copy: writable, native byte order


def _read_data(archive, info, offset, nbytes, fail):
    """``nbytes`` of entry ``info`` after its ``offset``-byte header, with the entry's CRC checked."""
    with archive.open(info) as stream:
        stream.read(offset)
        data = stream.read(nbytes)
        stream.read()  # reading to the end makes zipfile check the entry's CRC
    if len(data) != nbytes:
        raise fail(f"entry '{info.filename[:-4]}' ends after {len(data):,} of its {nbytes:,} bytes of data: "
                   f"the file is truncated")
    return data


def _read_config(archive, info, fail):
    """The JSON architecture description, size-checked before it is read."""
    def too_large(size):
        return fail(f"the configuration takes {size:,} bytes; a model's JSON description is at most "
                    f"{MAX_CONFIG_BYTES:,}: refusing to read it")

    if info.file_size > MAX_CONFIG_BYTES + MAX_HEADER_BYTES:
        raise too_large(info.file_size)
    shape, dtype, _, offset = _array_header(archive, info, "__config__", fail, "u")
    if dtype.itemsize != 1 or len(shape) != 1:
        raise fail(f"the configuration entry must be a 1-d uint8 array (UTF-8 JSON text), found shape "
                   f"{shape} of {dtype}")
    if shape[0] > MAX_CONFIG_BYTES:
        raise too_large(shape[0])
    data = _read_data(archive, info, offset, shape[0], fail)
    try:
        config = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise fail(f"the configuration is not UTF-8 text ({e})") from None
    except json.JSONDecodeError as e:
        raise fail(f"the configuration is not valid JSON ({e})") from None
    except (RecursionError, ValueError) as e:  # nesting bombs; integers of thousands of digits
        raise fail(f"the configuration cannot be read as JSON ({type(e).__name__}: {e})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise fail("not a tinycnn model file (unknown format)")
    return config
