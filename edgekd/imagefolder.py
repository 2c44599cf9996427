"""``imagefolder:DIR``: the layout everyone already has (torchvision's ``ImageFolder``).

    DIR/train/<class>/*.png|jpg|jpeg|bmp|webp      (required)
    DIR/test/<class>/...                           (optional; else a fixed stratified test split)

Options ride in the spec, so an artifact's recorded data spec reloads the same images:
``imagefolder:DIR,size=32x32,channels=3,test=0.2`` (``--image-size``, ``--channels``,
``--test-fraction`` on the command line). Class names are the folder names, sorted. Without ``size``
every image must have the same size (two files of different sizes are named); ``channels`` defaults
to 3 if any image is in colour, else 1.

Decoding (Pillow) happens once: the uint8 arrays are cached in ``$EDGEKD_CACHE/images`` as ``.npy``
files read back memory-mapped, keyed by the file list with sizes and modification times and the
options. Every hit re-hashes a random sample of the files against the hashes stored at decoding
time, so a folder whose contents changed is never served stale. A corrupt image or a decompression
bomb is one ``DataError`` naming the file. Each decoded image's pixels are digested (``{key}.h.npy``) so
that copies across the train/test split or under two classes can be named (``edgekd.data``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import struct
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from edgekd.cachedir import allocated_memmap, cached_array, file_identity, touch
from edgekd.errors import DataError, EdgekdWarning
from edgekd.outputs import hold, holding, release

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
MAX_PIXELS = 64_000_000      # per image: beyond this Pillow's decompression-bomb guard refuses it
SAMPLE = 32                  # files re-hashed on every cache hit
DECODE_WINDOW = 4096        # files handed to the decoding threads at a time
CACHE_VERSION = 3           # 3: turned upright by the EXIF orientation; 2: 16-bit grayscale by its top byte


@dataclass(frozen=True)
class FolderSpec:
    root: Path
    size: tuple[int, int] | None = None      # (height, width) to resize to
    channels: int | None = None              # 1 or 3; None: from the files
    test_fraction: float = 0.2               # held out when there is no test/ folder
    test_given: bool = False                 # test=F was written: refused when test/ exists, where it would be ignored

    def spec(self) -> str:
        parts = [str(self.root)]
        if self.size:
            parts.append(f"size={self.size[0]}x{self.size[1]}")
        if self.channels:
            parts.append(f"channels={self.channels}")
        if self.test_fraction != 0.2:
            parts.append(f"test={self.test_fraction:g}")
        return "imagefolder:" + ",".join(parts)


OPTIONS = ("size", "channels", "test")


def split_spec(arg: str) -> tuple[str, list[str]]:
    """``DIR[,option...]`` -> (DIR as typed, [option, ...]). The options are read from the right, so a folder whose
    name holds a comma ('my photos, 2024') is a folder."""
    parts = arg.split(",")
    options = []
    while len(parts) > 1 and parts[-1].partition("=")[0] in OPTIONS:
        options.insert(0, parts.pop())
    root = ",".join(parts)
    if "," in root and not Path(root).exists():   # no such folder: a misspelt option rather than a comma in a name
        root, *unknown = root.split(",")
        options = [*unknown, *options]
    return root, options


def parse_spec(arg: str) -> FolderSpec:
    """``DIR[,size=HxW][,channels=C][,test=F]`` -> FolderSpec, every option checked (``split_spec``)."""
    root, options = split_spec(arg)
    values = {}
    for option in options:
        key, eq, value = option.partition("=")
        try:
            if key == "size" and eq:
                height, width = (int(v) for v in value.lower().split("x"))
                if not (1 <= height <= 4096 and 1 <= width <= 4096):
                    raise ValueError
                values["size"] = (height, width)
            elif key == "channels" and value in ("1", "3"):
                values["channels"] = int(value)
            elif key == "test" and eq and 0 < float(value) < 1:
                values["test_fraction"], values["test_given"] = float(value), True
            else:
                raise ValueError
        except ValueError:
            raise DataError(f"Image folder option '{option}' is not understood; expected size=HxW (1..4096), channels=1|3 "
                            f"or test=F in (0, 1), e.g. 'imagefolder:{root},size=32x32,channels=3'.") from None
    if not root:
        raise DataError("The 'imagefolder' data spec needs a folder: imagefolder:DIR (with DIR/train/<class>/...).")
    return FolderSpec(Path(root), **values)


def _is_text(name: str) -> bool:
    try:
        name.encode()
        return True
    except UnicodeEncodeError:   # bytes that are not UTF-8, held by Python as surrogates (cp1252 or Shift-JIS names)
        return False


def scan(spec: FolderSpec) -> tuple[tuple[str, ...], list[tuple[Path, int]], list[tuple[Path, int]] | None]:
    """(classes, train files with labels, test files with labels or None), sorted, checked."""
    train = spec.root / "train"
    if not train.is_dir():
        raise DataError(f"Image folder '{spec.root}' has no 'train' folder; expected {spec.root}/train/<class>/*.png "
                        f"(and optionally {spec.root}/test/<class>/...).")
    classes = tuple(sorted(p.name for p in train.iterdir() if p.is_dir() and not p.name.startswith(".")))
    if not _is_text(str(spec.root)):   # the folder's path is recorded with every model and export made from it
        raise DataError(f"Image folder {ascii(str(spec.root))} has a path that is not UTF-8; rename it (or move the "
                        f"images to a folder whose path is).")
    undecodable = [name for name in classes if not _is_text(name)]
    if undecodable:   # a class's name goes into manifests, ONNX metadata and reports, which are UTF-8 text
        raise DataError(f"Image folder '{train}' has class folder(s) whose names are not UTF-8 "
                        f"({', '.join(ascii(name) for name in undecodable[:3])}); rename them to UTF-8 (e.g. convmv -f "
                        f"cp1252 -t utf8 --notest -r '{train}').")
    if len(classes) < 2:
        raise DataError(f"Image folder '{train}' has {len(classes)} class folder(s); a classifier needs at least 2 "
                        f"(one sub-folder per class).")

    def files(split: Path):
        found = []
        for label, name in enumerate(classes):
            folder = split / name
            if not folder.is_dir():
                continue
            found += [(p, label) for p in _class_files(folder)]
        return found

    train_files = files(train)
    present = {label for _, label in train_files}
    empty = [name for label, name in enumerate(classes) if label not in present]
    if empty:
        raise DataError(f"Image folder '{train}': class folder(s) {', '.join(empty[:3])} hold no images "
                        f"({', '.join(EXTENSIONS)}); add images or remove the folders.")
    test = spec.root / "test"
    test_files = files(test) if test.is_dir() else None
    if test_files is not None:
        extra = sorted(p.name for p in test.iterdir() if p.is_dir() and p.name not in classes and not p.name.startswith("."))
        if extra:
            raise DataError(f"Image folder '{test}' has class folder(s) {', '.join(extra[:3])} that train/ lacks; "
                            f"the test classes must be among the train classes.")
        if not test_files:
            raise DataError(f"Image folder '{test}' holds no images; remove it (a test split is then held out) or fill it.")
        if spec.test_given:
            raise DataError(f"Image folder '{spec.root}' has a test/ folder, so no test split is held out and test=F "
                            f"(--test-fraction) would be ignored. Got test={spec.test_fraction:g}; leave it out, or remove "
                            f"test/ to hold out that fraction instead.")
    _check_counts(train, classes, train_files, held_out=test_files is None)
    return classes, train_files, test_files


def _check_counts(train: Path, classes, train_files, held_out: bool) -> None:
    """Every class has the images its splits need, known from the file names before anything is decoded (the same
    rule ``edgekd.data`` applies to the decoded arrays, where a large folder was decoded for minutes first)."""
    need = 3 if held_out else 2
    counts = np.bincount([label for _, label in train_files], minlength=len(classes))
    few = [classes[label] for label in np.flatnonzero(counts < need)]
    if few:
        splits = "test, val and train" if held_out else "val and train"
        raise DataError(f"Image folder '{train}': every class needs at least {need} images (one each for {splits}); class "
                        f"folder(s) {', '.join(few[:3])} have fewer; add images{', or a test/ folder' if held_out else ''}.")


class ImageFolderArrays(NamedTuple):
    """uint8 (N, C, H, W) arrays memory-mapped from the decode cache (the test ones None without a ``test/``
    folder: ``test_fraction`` of the train images are held out instead), and for every image, train's then
    test's, a 64-bit digest of its decoded pixels and (``name_of(index)``) its file name under the root."""

    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    classes: tuple[str, ...]
    test_fraction: float
    digests: np.ndarray
    name_of: Callable[[int], str]


def load_imagefolder(arg: str, cache_dir: Path | None = None) -> ImageFolderArrays:
    spec = parse_spec(arg)
    classes, train_files, test_files = scan(spec)
    everything = train_files + (test_files or [])
    cache = Path(cache_dir or os.environ.get("EDGEKD_CACHE") or Path.home() / ".cache" / "edgekd") / "images"
    key = _cache_key(spec, everything)
    arrays = _cached(cache, key, spec)
    if arrays is None:
        with _decoding(cache, key):   # one process decodes; the others (torchrun's ranks) wait, then read its entry
            arrays = _cached(cache, key, spec) or _decode_and_store(cache, key, spec, everything)
    x, y, digests = arrays
    n_train = len(train_files)
    name_of = lambda i: os.fsdecode(everything[i][0].relative_to(spec.root))  # noqa: E731 (named only when warned of)
    if test_files is None:
        return ImageFolderArrays(x, y, None, None, classes, spec.test_fraction, digests, name_of)
    return ImageFolderArrays(x[:n_train], y[:n_train], x[n_train:], y[n_train:], classes, spec.test_fraction,
                             digests, name_of)


@contextlib.contextmanager
def _decoding(cache: Path, key: str):
    """An exclusive lock (``images/.<key>.lock``, blocking) around decoding one folder."""
    import fcntl

    try:
        cache.mkdir(parents=True, exist_ok=True)
        fd = os.open(cache / f".{key}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:   # a cache that cannot be written: the decode says so
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:   # removed, not left in the cache: a process that opened it meanwhile at worst decodes once more
        with contextlib.suppress(OSError):
            (cache / f".{key}.lock").unlink()
        os.close(fd)


def _changed_since(spec: FolderSpec, files, key: str) -> bool:
    """Whether the folder's files (their list, or any file's identity) differ from those ``key`` was made of."""
    try:
        _, train, test = scan(spec)
        return train + (test or []) != list(files) or _cache_key(spec, files) != key
    except (OSError, DataError):   # a file removed, or the folder no longer a folder of classes
        return True


def _cache_key(spec: FolderSpec, files) -> str:
    import PIL

    # Pillow decodes (its JPEG decoder, its resize filter) otherwise from release to release: an upgrade decodes again
    digest = hashlib.sha256(json.dumps([CACHE_VERSION, PIL.__version__, str(spec.root.resolve()), spec.size,
                                        spec.channels]).encode())
    for path, label in files:
        stat = path.stat()
        # the name as the bytes it is on disk: a file's name need not be UTF-8 (and is only a key here)
        digest.update(os.fsencode(path.relative_to(spec.root)) + f"\0{label}\0{file_identity(stat)}\n".encode())
    return digest.hexdigest()[:32]


def _cached(cache: Path, key: str, spec: FolderSpec):
    meta_path = cache / f"{key}.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):   # (json.JSONDecodeError and a torn file's UnicodeDecodeError are ValueErrors)
        return None   # a torn entry: decode again
    x, y = cached_array(cache / f"{key}.x.npy", mmap_mode="r"), cached_array(cache / f"{key}.y.npy", mmap_mode="r")
    if x is None or y is None or len(x) != len(y):
        return None   # a torn entry: decode again
    for relative, expected in meta.get("sample", []):
        path = spec.root / relative
        if not path.is_file() or _sha256(path) != expected:
            warnings.warn(f"the decoded cache of '{spec.root}' no longer matches '{relative}' (changed content); "
                          f"decoding the folder again", EdgekdWarning, stacklevel=3)
            return None
    touch(meta_path)   # used now: `edgekd cache prune --older-than` keeps it
    return x, y, _digests(cache, key, x)   # (after the sample check: a stale entry is not digested first)


def _class_files(folder: Path) -> list[Path]:
    """The images of one class folder, sorted: nested folders count, linked ones too (as in torchvision's
    ImageFolder; a folder reached twice, or a link back up, is walked once); hidden entries (macOS '._x.png'
    resource forks, '.thumbnails/') are not images of the class."""
    found, seen = [], set()
    for here, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(here)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(here) / n for n in names if not n.startswith(".") and Path(n).suffix.lower() in EXTENSIONS
                  and os.path.isfile(os.path.join(here, n))]
    return sorted(found)


def _decode_and_store(cache: Path, key: str, spec: FolderSpec, files):
    from PIL import Image

    channels = spec.channels or _channels_of(files)
    size = spec.size or _common_size(files)
    mode = "L" if channels == 1 else "RGB"

    def decode(item):
        with _open_image(item[0]) as image:
            # upright as a viewer shows it: a phone stores a portrait photo lying down, with an orientation tag
            image = _eight_bit(_upright(image)).convert(mode)
            if (image.height, image.width) != size:
                image = image.resize((size[1], size[0]), Image.BILINEAR)
            array = np.asarray(image, dtype=np.uint8)
        array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
        return array, pixel_digest(array)

    rng = random.Random(key)
    sample = rng.sample(files, min(SAMPLE, len(files)))
    meta = {"root": str(spec.root), "n": len(files), "size": list(size), "channels": channels,
            "sample": [[str(path.relative_to(spec.root)), _sha256(path)] for path, _ in sample]}
    try:
        cache.mkdir(parents=True, exist_ok=True)
        # held while written (edgekd.outputs.hold): a cache another container shares must not take them for a dead writer's
        tmp, y_tmp, h_tmp = (hold(cache / f".{key}.{os.getpid()}.{part}.npy") for part in "xyh")
        x = allocated_memmap(tmp, np.uint8, (len(files), channels, *size))
        digests = np.empty(len(files), dtype=np.uint64)
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:   # Pillow decodes without the GIL
            # a window at a time: a thread pool's map submits every file at once (a future each, ~2 KB)
            for start in range(0, len(files), DECODE_WINDOW):
                for index, (array, digest) in enumerate(pool.map(decode, files[start:start + DECODE_WINDOW]), start):
                    x[index], digests[index] = array, digest
        x.flush()
        del x
        if _changed_since(spec, files, key):   # an entry keyed by the files as they were, holding some as they are
            raise DataError(f"Image folder '{spec.root}' changed while it was decoded (files added, replaced or removed); "
                            f"rerun once it is complete.")
        y = np.array([label for _, label in files], dtype=np.int64)
        np.save(y_tmp, y)
        np.save(h_tmp, digests)
        os.replace(tmp, cache / f"{key}.x.npy")
        os.replace(y_tmp, cache / f"{key}.y.npy")
        os.replace(h_tmp, cache / f"{key}.h.npy")
        header = hold(cache / f".{key}.{os.getpid()}.json.tmp")   # the pid's: two processes decoding one folder race
        header.write_text(json.dumps(meta))
        os.replace(header, cache / f"{key}.json")   # the entry exists once its header does
    except BaseException as exc:   # a corrupt image, a full disk, Ctrl-C: no half-written entry left behind
        for leftover in cache.glob(f".{key}.{os.getpid()}.*") if cache.is_dir() else ():
            leftover.unlink(missing_ok=True)
        if not isinstance(exc, OSError):
            raise
        raise DataError(f"Cannot write the decoded images of '{spec.root}' to '{cache}' ({exc.strerror or exc}); free "
                        f"disk space there or point EDGEKD_CACHE at a folder with room for them.") from None
    finally:
        for part in ("x.npy", "y.npy", "h.npy", "json.tmp"):
            release(cache / f".{key}.{os.getpid()}.{part}")
    return np.load(cache / f"{key}.x.npy", mmap_mode="r"), np.load(cache / f"{key}.y.npy", mmap_mode="r"), digests


def _digests(cache: Path, key: str, x: np.ndarray) -> np.ndarray:
    """The entry's pixel digests; an entry decoded before they were kept gets them from its pixels (no decode), kept
    beside it when the cache can be written."""
    try:
        return np.load(cache / f"{key}.h.npy")
    except (OSError, ValueError):
        pass
    digests = pixel_digests(x)
    tmp = cache / f".{key}.{os.getpid()}.h.npy"
    try:
        with holding(tmp):
            np.save(tmp, digests)
            os.replace(tmp, cache / f"{key}.h.npy")
    except OSError:   # a read-only cache: computed again next time
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    return digests


def pixel_digests(rows) -> np.ndarray:
    """``pixel_digest`` of each row, a row at a time (a memory-mapped array is read as it goes, never whole)."""
    return np.fromiter((pixel_digest(row) for row in rows), dtype=np.uint64, count=len(rows))


def pixel_digest(array: np.ndarray) -> int:
    """64 bits of BLAKE2b over an image's decoded pixels: equal for copies of one image, whatever their file names
    or formats (a PNG and a BMP of the same pixels), and colliding by chance once in 2**64 pairs."""
    return int.from_bytes(hashlib.blake2b(np.ascontiguousarray(array).data, digest_size=8).digest(), "little")


def _eight_bit(image):
    """16-bit grayscale as 8-bit by its top byte: Pillow's own conversion to 'L' clips every value above 255,
    which turns a 16-bit image white."""
    from PIL import Image

    if image.mode.startswith("I;16") or image.mode == "I":
        array = np.asarray(image).astype(np.int64)
        if image.mode != "I" or array.max(initial=0) > 255:   # an 'I' image of 8-bit values stays as it is
            array = array >> 8
        return Image.fromarray(array.clip(0, 255).astype(np.uint8), "L")
    return image


def _channels_of(files) -> int:
    for path, _ in files:
        try:
            with _open_image(path) as image:
                if image.mode not in ("L", "1", "I", "I;16", "F", "LA"):
                    return 3
        except DataError:
            continue   # named when it is decoded
    return 1


def _common_size(files) -> tuple[int, int]:
    """The (height, width) every image shares; two files of different sizes are named."""
    first, size = None, None
    for path, _ in files:
        with _open_image(path) as image:
            this = _upright_size(image)
        if size is None:
            first, size = path, this
        elif this != size:
            raise DataError(f"Images differ in size: '{first}' is {size[1]}x{size[0]} but '{path}' is {this[1]}x{this[0]}; "
                            f"pass --image-size HxW (e.g. {size[0]}x{size[1]}) to resize them all.")
    return size


def _upright_size(image) -> tuple[int, int]:
    """(height, width) as the image is shown: EXIF orientations 5 to 8 turn it a quarter (read from the
    header; nothing is decoded)."""
    turned = _orientation(image) in (5, 6, 7, 8)
    return (image.width, image.height) if turned else (image.height, image.width)


def _upright(image):
    """``image`` turned as its EXIF orientation tag says (Pillow's ``ImageOps.exif_transpose`` turns it the same way
    but also writes the EXIF block back, which raised on a malformed tag: an internal error for a photo any viewer
    shows). A tag that cannot be read leaves the image as stored, as ``_upright_size`` does."""
    from PIL import Image

    turns = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
             5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
             8: Image.Transpose.ROTATE_90}
    turn = turns.get(_orientation(image))   # the rule the size check uses (_upright_size)
    return image.transpose(turn) if turn is not None else image


def _orientation(image) -> int | None:
    """The EXIF orientation tag, read from the header: None for a PNG whose EXIF is not in its header, since Pillow
    decodes a whole PNG to look for an eXIf chunk after its pixels (every image decoded twice for the size check; the
    PNG specification puts eXIf before the pixels). The size check and the decode both read it so: an image turned by
    one and not the other was squashed by the resize."""
    if image.format == "PNG" and "exif" not in image.info:
        return None
    try:
        return image.getexif().get(0x0112)
    except Exception:   # noqa: BLE001  (a malformed EXIF block: Pillow raises any of several types)
        return None


@contextlib.contextmanager
def _open_image(path: Path):
    """``Image.open(path)``, refusing a decompression bomb (over ``MAX_PIXELS``, by the header's size) before
    it is decoded; any failure to read or decode it is one ``DataError`` naming the file."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if image.width * image.height > MAX_PIXELS:
                    raise Image.DecompressionBombError(f"{image.width}x{image.height} pixels")
                yield image
    except PermissionError as exc:
        raise DataError(f"Image '{path}' cannot be read ({exc.strerror}); make it readable or remove it.") from None
    except (OSError, ValueError, SyntaxError, struct.error, TypeError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as exc:   # struct.error, TypeError: a malformed header or metadata block
        raise DataError(f"Image '{path}' cannot be decoded ({exc.__class__.__name__}: {str(exc)[:120]}); remove or "
                        f"replace it.") from None


def _sha256(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise DataError(f"Image '{path}' cannot be read ({exc.strerror or exc}); make it readable or remove it.") from None
