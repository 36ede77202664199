"""A fast index of an uncompressed tar: which samples it holds and where their members' bytes lie.

:func:`index_tar` walks the tar's 512-byte headers in a compiled loop over a memory-mapped file,
never reading member data, and groups consecutive members by key exactly as
:func:`oodlab.data.shards.iter_tar_samples` does, with the rules of :mod:`oodlab.data.tarformat`:
key = member name up to the first dot of its base name; extension lower-cased (the walk finds the
extension's bytes; :func:`member_extension` lowers them afterwards, skipped after one vectorised
test when all are lower-case ASCII already); directories and housekeeping members skipped (the
walk flags a name field whose key base name, the bytes after its last ``/``, is longer than 4
bytes and starts and ends with ``__``: :func:`is_housekeeping` on those bytes; long and prefixed
names are decided by :func:`is_housekeeping` itself). Each member's span runs from its first
header block (including a preceding pax ``x`` or GNU ``L`` long-name header) to the end of its
padded data, so copying the spans copies the members byte for byte, headers included (the
original, not lower-cased, names).

It refuses what :func:`iter_tar_samples` refuses, with the same messages: a member whose path
escapes its folder (:func:`check_member_path` decides), links and special files, a sample with two
members of one extension (``a.jpg`` and ``a.JPG`` are two ``jpg`` members), and a truncated tar
(:class:`TruncatedShardError`: a header or data running past the end of the file, or no
end-of-archive marker; it names the byte offset and the first sample lost, the same as the
streaming reader's). Header checksums are verified.
Compressed tars are refused (they cannot be indexed without decompressing).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numba import njit

from oodlab.data.tarformat import (
    COMPRESSED_MAGIC,
    check_member_path,
    is_housekeeping,
    member_extension,
    split_member_name,
    truncated_shard,
)
from oodlab.utils.errors import InputError

BLOCK = 512
#: tarfile pads archives to records of 20 blocks
RECORD_SIZE = 20 * BLOCK

# walk status (and _NO_MEMBER: extended headers end the archive)
_OK, _TRUNCATED, _NO_END, _BAD_HEADER, _NO_MEMBER = 0, 1, 2, 3, 4
# entry flags
_SUSPICIOUS, _HOUSEKEEPING, _PREFIX = 1, 2, 4
# type flags
_REGULAR = (0, ord("0"), ord("7"))
_DIRECTORY = ord("5")
_META = (ord("x"), ord("L"), ord("K"))  # apply to the next header (pax extended, GNU long name/link)
_GLOBAL = ord("g")
_LOW = np.uint64(0x00FF00FF00FF00FF)
_LANE = np.uint64(0xFFFF)


@njit(cache=True, nogil=True)
def _number(buf, start, length):  # pragma: no cover - compiled
    """tarfile's ``nti``: base-256 when the first byte is 0x80, else NUL-terminated octal."""
    first = buf[start]
    if first == 0x80:
        n = 0
        for q in range(start + 1, start + length):
            n = n * 256 + buf[q]
        return n, True
    if first == 0xFF:
        return 0, False
    n = 0
    seen = False
    end = start + length
    q = start
    while q < end and buf[q] != 0:
        c = buf[q]
        if c == 32:
            if seen:  # trailing space ends the number
                break
        elif 48 <= c <= 55:
            n = n * 8 + (c - 48)
            seen = True
        else:
            return 0, False
        q += 1
    return n, True


@njit(cache=True, nogil=True)
def _walk(buf, words, hdr, size, typ, name_len, key_len, flags):  # pragma: no cover - compiled
    """Record every header of the tar in ``buf`` (``words``: the same bytes as uint64, for the
    checksum); returns (entries, status, position)."""
    n = buf.shape[0]
    pos = 0
    m = 0
    while True:
        if pos + 512 > n:
            return m, 1, pos
        zero = True
        for q in range(pos, pos + 512):
            if buf[q] != 0:
                zero = False
                break
        if zero:
            if pos + 1024 > n:
                return m, 2, pos
            for q in range(pos + 512, pos + 1024):
                if buf[q] != 0:
                    return m, 2, pos
            return m, 0, pos
        stored, ok = _number(buf, pos + 148, 8)
        if not ok:
            return m, 3, pos
        # unsigned byte sum with the checksum field counted as spaces: 64-bit words, bytes summed
        # in four 16-bit lanes (SWAR; 64 words x 510 fits a lane)
        lanes = np.uint64(0)
        w0 = pos // 8
        for q in range(w0, w0 + 64):
            w = words[q]
            lanes += (w & _LOW) + ((w >> np.uint64(8)) & _LOW)
        unsigned = np.int64(lanes & _LANE) + np.int64((lanes >> np.uint64(16)) & _LANE)
        unsigned += np.int64((lanes >> np.uint64(32)) & _LANE) + np.int64(lanes >> np.uint64(48))
        for q in range(pos + 148, pos + 156):
            unsigned -= buf[q]
        unsigned += 256
        if stored != unsigned:  # tarfile also accepts the sum of signed bytes
            signed = 256
            for q in range(512):
                if not 148 <= q < 156:
                    b = np.int64(buf[pos + q])
                    signed += b if b < 128 else b - 256
            if stored != signed:
                return m, 3, pos
        sz, ok = _number(buf, pos + 124, 12)
        if not ok or sz < 0:
            return m, 3, pos
        # one pass over the name field: length, last '/', escaping patterns
        f = 0
        slash = -1
        nl = 100
        prev = 0
        for q in range(100):
            c = buf[pos + q]
            if c == 0:
                nl = q
                break
            if c == 47:
                slash = q
            elif c == 58 or (c == 46 and prev == 46):
                f |= 1
            prev = c
        kl = nl
        for q in range(slash + 1, nl):
            if buf[pos + q] == 46:
                kl = q
                break
        if nl > 0 and (buf[pos] == 47 or buf[pos] == 92):
            f |= 1
        # is_housekeeping: the key's base name (slash + 1 .. kl) is "__x__", x not empty
        if (kl - slash - 1 > 4 and buf[pos + slash + 1] == 95 and buf[pos + slash + 2] == 95
                and buf[pos + kl - 2] == 95 and buf[pos + kl - 1] == 95):
            f |= 2
        if (buf[pos + 257] == 117 and buf[pos + 258] == 115 and buf[pos + 259] == 116 and buf[pos + 260] == 97
                and buf[pos + 261] == 114 and buf[pos + 345] != 0):
            f |= 4
        hdr[m] = pos
        size[m] = sz
        typ[m] = buf[pos + 156]
        name_len[m] = nl
        key_len[m] = kl
        flags[m] = f
        m += 1
        end = pos + 512 + ((sz + 511) // 512) * 512
        if end > n:
            return m, 1, pos
        pos = end


@dataclass
class TarIndex:
    """The samples of one tar and the byte spans of their members.

    Attributes:
        path: the tar.
        keys: bytes array ``S*`` [s]: sample keys (UTF-8), in tar order (a key may repeat if the
            tar repeats it non-consecutively).
        bounds: int64 [s + 1]: sample i's members are ``bounds[i]:bounds[i + 1]``.
        start, end: int64 [m]: member spans (headers included, data padded to 512 bytes).
        data, size: int64 [m]: offset and length of each member's data.
        ext: bytes array [m]: each member's extension, lower-cased (``jpg``, ``seg.png``...).
        archive_end: offset of the end-of-archive marker.
        payload: member index -> data, for the members of ``read_ext`` (see :func:`index_tar`).
    """

    path: Path
    keys: np.ndarray
    bounds: np.ndarray
    start: np.ndarray
    end: np.ndarray
    data: np.ndarray
    size: np.ndarray
    ext: np.ndarray
    archive_end: int
    payload: dict[int, bytes] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.keys)


def _gather_field(buf: np.ndarray, offsets: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """bytes array: ``buf[offsets + lo : offsets + hi]`` per row (fields inside 512-byte headers)."""
    width = int((hi - lo).max()) if len(offsets) else 0
    if width <= 0:
        return np.zeros(len(offsets), dtype="S1")
    cols = np.arange(width)
    idx = (offsets + lo)[:, None] + cols[None, :]
    mat = buf[np.minimum(idx, len(buf) - 1)]
    mat[cols[None, :] >= (hi - lo)[:, None]] = 0
    return np.ascontiguousarray(mat).view(f"S{width}").ravel()


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _parse_pax(path: Path, raw: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    pos = 0
    while pos < len(raw) and raw[pos] != 0:
        space = raw.find(b" ", pos)
        try:
            length = int(raw[pos:space])
        except ValueError as err:
            raise InputError(path, f"has a malformed pax header at byte {pos}", "re-create the shard") from err
        record = raw[space + 1 : pos + length - 1]
        key, _, value = record.partition(b"=")
        out[_decode(key)] = _decode(value)
        pos += length
    return out


def index_tar(path: str | Path, *, read_ext: bytes | None = None) -> TarIndex:
    """Index the samples of an uncompressed tar without reading member data (see module docstring).

    Args:
        read_ext: also read the data of the members with this extension (e.g. ``b"txt"``, which
            also matches ``KEY.TXT``) into ``TarIndex.payload`` (small members only: they are
            held in memory).

    Raises:
        TruncatedShardError: the tar is cut short, has a damaged header or no end marker.
        InputError: compressed tar, escaping member path, link or special member, pax global
            header, a sample with two members of one extension (``a.jpg`` and ``a.JPG`` included).
    """
    path = Path(path)
    nbytes = path.stat().st_size
    if nbytes < BLOCK:
        raise truncated_shard(path, "shorter than one header", 0, None)
    buf = np.memmap(path, dtype=np.uint8, mode="r")
    try:
        if bytes(buf[:6]).startswith(COMPRESSED_MAGIC):
            raise InputError(path, "is a compressed tar, which subset copies cannot index", "decompress it first (e.g. gunzip)")
        index = _index(path, buf)
        if read_ext is not None:
            wanted = member_extension(_decode(read_ext)).encode("utf-8", "surrogateescape")
            index.payload = _read_payload(buf, index, wanted)
        return index
    finally:
        del buf


def _read_payload(buf: np.ndarray, index: TarIndex, ext: bytes) -> dict[int, bytes]:
    members = np.flatnonzero(index.ext == ext)
    if not len(members):
        return {}
    lo, size = index.data[members], index.size[members]
    ends = np.cumsum(size)
    pos = np.arange(int(ends[-1]), dtype=np.int64) - np.repeat(ends - size - lo, size)
    blob = np.asarray(buf[pos]).tobytes()
    starts = (ends - size).tolist()
    return {m: blob[a:b] for m, a, b in zip(members.tolist(), starts, ends.tolist())}


def _index(path: Path, buf: np.ndarray) -> TarIndex:
    cap = len(buf) // BLOCK + 1
    hdr, size = np.empty(cap, np.int64), np.empty(cap, np.int64)
    typ, flags = np.empty(cap, np.uint8), np.empty(cap, np.uint8)
    name_len, key_len = np.empty(cap, np.int64), np.empty(cap, np.int64)
    words = buf[: len(buf) // 8 * 8].view(np.uint64)
    m, status, pos = _walk(buf, words, hdr, size, typ, name_len, key_len, flags)
    # a run of extended headers at the end names a member that is not there (and its own data
    # may be cut): the headers before it are what was read
    complete = m
    while complete and typ[complete - 1] in _META:
        complete -= 1
    if status == _OK and complete < m:
        status, pos = _NO_MEMBER, int(hdr[complete])
    headers = (hdr[:complete], size[:complete], typ[:complete], flags[:complete], name_len[:complete], key_len[:complete])
    if status != _OK:
        # the samples of the headers before the damage; the last one is the first lost, as
        # iter_tar_samples' streaming reader finds: the one cut short, or one no later header
        # proves complete (its refusals of earlier members come first, in tar order, as there)
        read = _samples(path, buf, pos, *headers)
        why = {_TRUNCATED: "unexpected end of data", _NO_END: "no end-of-archive marker", _BAD_HEADER: "invalid header",
               _NO_MEMBER: "extended header without member"}[status]
        raise truncated_shard(path, why, pos, _decode(read.keys[-1]) if len(read) else None)
    return _samples(path, buf, pos, *headers)


def _samples(path: Path, buf: np.ndarray, pos: int, hdr: np.ndarray, size: np.ndarray, typ: np.ndarray,
             flags: np.ndarray, name_len: np.ndarray, key_len: np.ndarray) -> TarIndex:
    """The index of the headers the walk recorded (none of them extended headers at the end);
    ``pos``: where the walk stopped."""
    m = len(hdr)
    # tarfile: an old-style regular file (type NUL) whose name ends with "/" is a directory
    old_dir = (typ == 0) & (name_len > 0)
    old_dir[old_dir] = buf[hdr[old_dir] + name_len[old_dir] - 1] == ord("/")
    typ = np.where(old_dir, np.uint8(_DIRECTORY), typ)
    span_start = hdr.copy()
    span_end = hdr + BLOCK + (size + BLOCK - 1) // BLOCK * BLOCK
    is_meta = np.isin(typ, _META)
    if (typ == _GLOBAL).any():
        raise InputError(path, "has a pax global header, which subset copies do not support", "re-create the shard without global headers")

    # names that need Python: long names (pax/GNU), ustar prefixes, and possibly escaping paths
    names: dict[int, str] = {}
    i = 0
    meta_idx = np.flatnonzero(is_meta)
    for j in meta_idx:  # group each run of meta headers with the header they precede
        if j < i:
            continue
        run_start = j
        k = j
        pending: dict[str, str] = {}
        while k < m and is_meta[k]:
            data = bytes(buf[hdr[k] + BLOCK : hdr[k] + BLOCK + size[k]])
            if typ[k] == ord("L"):
                pending["path"] = _decode(data.split(b"\0", 1)[0])
            elif typ[k] == ord("x"):
                pax = _parse_pax(path, data)
                if "size" in pax and k + 1 < m and int(pax["size"]) != size[k + 1]:
                    raise InputError(path, "has a member whose size only a pax header gives (> 8 GiB)", "re-create the shard")
                if "path" in pax:
                    pending["path"] = pax["path"]
            k += 1
        span_start[k] = hdr[run_start]
        if "path" in pending:
            names[int(k)] = pending["path"]
        i = k + 1
    for j in np.flatnonzero((flags & (_SUSPICIOUS | _PREFIX)) != 0).tolist():
        if j in names or is_meta[j]:
            continue
        name = _decode(bytes(buf[hdr[j] : hdr[j] + name_len[j]]))
        if flags[j] & _PREFIX:
            prefix = _decode(bytes(buf[hdr[j] + 345 : hdr[j] + 500]).split(b"\0", 1)[0])
            name = f"{prefix}/{name}"
        names[j] = name

    regular = np.isin(typ, _REGULAR)
    keep = regular & ((flags & _HOUSEKEEPING) == 0)
    special = set(names) | set(np.flatnonzero(~regular & ~is_meta & (typ != _DIRECTORY)).tolist())
    for j in sorted(special):  # in tar order, checked as iter_tar_samples does: path, then type
        if typ[j] == _DIRECTORY:
            continue
        if j in names:
            check_member_path(path, names[j])
        if not regular[j]:
            name = names.get(j) or _decode(bytes(buf[hdr[j] : hdr[j] + name_len[j]]))
            raise InputError(path, f"member {name!r} is a link or special file", "re-create the shard")
        key, _ = split_member_name(names[j])
        keep[j] = not is_housekeeping(key)
    members = np.flatnonzero(keep)
    h = hdr[members]
    keys = _gather_field(buf, h, np.zeros(len(members), np.int64), key_len[members])
    ext_lo = np.minimum(key_len[members] + 1, name_len[members])
    exts = _gather_field(buf, h, ext_lo, name_len[members])
    named = [(int(np.searchsorted(members, j)), j) for j in sorted(names) if keep[j]]
    if named:
        keys, exts = keys.astype(object), exts.astype(object)
        for row, j in named:
            key, ext = split_member_name(names[j])
            keys[row] = key.encode("utf-8", "surrogateescape")
            exts[row] = ext.encode("utf-8", "surrogateescape")
        keys, exts = keys.astype(bytes), exts.astype(bytes)
    exts = _lower_extensions(exts)
    new = np.ones(len(keys), bool)
    new[1:] = keys[1:] != keys[:-1]
    first = np.flatnonzero(new)
    bounds = np.append(first, len(keys)).astype(np.int64)
    sample_of = np.cumsum(new) - 1
    _check_unique_ext(path, keys, exts, sample_of)
    return TarIndex(
        path=path, keys=keys[first], bounds=bounds, start=span_start[members], end=span_end[members],
        data=h + BLOCK, size=size[members], ext=exts, archive_end=int(pos),
    )


def _lower_extensions(exts: np.ndarray) -> np.ndarray:
    """``exts`` (bytes array [m]) as :func:`member_extension` gives them (UTF-8 text lower-cased)."""
    codes = np.ascontiguousarray(exts).view(np.uint8)
    if not (((codes >= ord("A")) & (codes <= ord("Z"))) | (codes >= 0x80)).any():
        return exts  # the usual shard: already lower-case ASCII
    # the few distinct extensions, lowered on the decoded text (non-ASCII upper case included)
    distinct, inverse = np.unique(exts, return_inverse=True)
    lowered = [member_extension(_decode(e)).encode("utf-8", "surrogateescape") for e in distinct.tolist()]
    return np.array(lowered, dtype=bytes)[inverse.ravel()]


def _check_unique_ext(path: Path, keys: np.ndarray, exts: np.ndarray, sample_of: np.ndarray) -> None:
    if len(exts) < 2:
        return
    order = np.lexsort((exts, sample_of))
    dup = (sample_of[order][1:] == sample_of[order][:-1]) & (exts[order][1:] == exts[order][:-1])
    if dup.any():
        j = order[1:][dup][0]
        raise InputError(path, f"sample {_decode(keys[j])} has two {_decode(exts[j])!r} members", "re-create the shard")
