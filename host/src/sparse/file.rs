//! Sparse weight files (`.stcw`): a checksummed dump of the two Tiled-CSL arrays.
//!
//! All integers are little-endian. The file is three sections, each followed by its checksum:
//!
//! | offset            | size             | field                                               |
//! |-------------------|------------------|-----------------------------------------------------|
//! | 0                 | 8                | magic `b"STCSPW\0\0"`                               |
//! | 8                 | 4 (u32)          | version, = 6 (2–4 are read too)                     |
//! | 12                | 1 (u8)           | dtype: 0 = f16, 1 = bf16                            |
//! | 13                | 1 (u8)           | flags: bit 0 = words are bank-reordered; others 0   |
//! | 14                | 2 (u16)          | format tag: 0 = Tiled-CSL, 2 (or 1) = bitmap        |
//! | 16                | 8 (u64)          | rows (M, out features), ≥ 1                         |
//! | 24                | 8 (u64)          | cols (K, in features), ≥ 1                          |
//! | 32                | 8 (u64)          | n_offsets = ceil(M/256)·ceil(K/64) + 1              |
//! | 40                | 8 (u64)          | n_words (multiple of 4, ≤ 16384 · tiles)            |
//! | 48                | 8 (u64)          | checksum of bytes 0..48                             |
//! | 56                | 4 · n_offsets    | tile_offsets, u32 each                              |
//! | 56 + 4·n_offsets  | 8 (u64)          | checksum of the tile_offsets bytes                  |
//! | 64 + 4·n_offsets  | 4 · n_words      | words, u32 each (`pos << 16 \| value bits`)         |
//! | end − 8           | 8 (u64)          | checksum of the words bytes                         |
//!
//! Tiles are 256 × 64 ([`TILE_M`] × [`TILE_K`]) and positions are `0..16384`, as described in
//! the [module docs](super).
//!
//! Versions: 1 used 64 × 64 tiles (`n_offsets = ceil(M/64)·ceil(K/64) + 1`, positions
//! `0..4096`); version 2 changed only the tile geometry to 256 × 64, so the byte layout is the
//! same but the arrays mean something else. A version-1 file is rejected with a message saying
//! so: re-encode the weight from its dense source (or convert by decoding with 64 × 64 tiles).
//! Versions 3 and 4 changed only the meaning of the positions: version 2 stored the
//! row-swizzled tile (`layout::swizzled_pos`), version 3 a fragment-native tile whose 16×16
//! blocks held each lane's 16-byte A fragment (position `8·lane + half` in the block), and
//! version 4 stores today's fragment-native tile (`layout::frag_pos`: 8-byte B-fragment
//! halves, so the SpMM can take W as the `mma` B operand). A version-2 or -3 file
//! is converted while loading: each position is remapped (a bijection of `0..16384`), and a
//! bank-reordered weight is reordered again for the new banks.
//!
//! Version 5 is the same container holding another format, named by the format tag at byte
//! 14 (reserved, = 0, up to version 4): tag 1 is the bitmap format with its earlier
//! block-major tiles, tag 2 (version 6) with lane-major tiles of one value segment, tag 3
//! (version 6 on) with today's tiles ([`super::bitmap::file`], which still reads tags 1
//! and 2). Version 6, written today for both
//! formats, changes only the checksums: XXH3-64 ([`checksum`]) instead of FNV-1a 64, which
//! hashed at 0.45 GB/s (half a second per 200 MB weight); XXH3 runs at memory speed. Files
//! of versions 2–5 still load.
//! [`SparseWeight::load`] refuses a bitmap file with a message naming its format.
//!
//! Nothing may follow the last checksum. Neither checksum is cryptographic; both detect
//! corruption (FNV-1a 64, offset basis `0xcbf29ce484222325`, prime `0x100000001b3`, changes
//! with every single byte: each step `h = (h ^ b) * prime` is a bijection of `h` for a fixed
//! byte and changes `h` when `b` changes, the prime being odd).
//!
//! [`SparseWeight::load`] checks, in this order: magic, version, header checksum, dtype (must
//! match the requested element type), flags, reserved, dimensions and the counts they imply
//! (with checked arithmetic, `crate::checked`), offsets checksum, offsets structure, words
//! checksum, absence of trailing bytes, and finally everything [`SparseWeight::from_parts`]
//! checks. Every failure is an [`Error::Format`] (or [`Error::Io`] for a failing reader); it
//! never panics. A corrupt header cannot make it allocate more than the input holds:
//! [`SparseWeight::load_file`] checks the file's length against the header before reading on,
//! and from a plain reader sections are read in pieces that start at 4 KiB and grow only as
//! data arrives (`tests/fuzz_sparse_file.rs` measures this under random inputs).

use std::io::{ErrorKind, Read, Write};
use std::path::Path;

use super::format::{
    pack_word, tile_pos, tile_grid, validate_offsets, word_bits, word_pos, SparseWeight, TILE_ELEMS, TILE_K,
    TILE_M, WORDS_PER_LOAD,
};
use crate::checked::Sizes;
use crate::element::{Dtype, Element};
use crate::layout;
use crate::error::{Error, Result};

/// First 8 bytes of every sparse weight file.
pub const MAGIC: [u8; 8] = *b"STCSPW\0\0";
/// The container version this library writes (both formats): 6, XXH3-64 checksums.
pub const VERSION: u32 = 6;
/// The Tiled-CSL layout of today (256 × 64 tiles, fragment-native positions of
/// [`layout::frag_pos`]), first written as version 4; earlier versions are converted.
const VERSION_FRAG_B: u32 = 4;
/// The last version with row-swizzled positions; converted while loading (as is version 3,
/// [`frag_a_native_coord`]).
const VERSION_ROW_SWIZZLED: u32 = 2;
/// The last version with 64 × 64 tiles; such files are rejected with an explanation.
const VERSION_64X64_TILES: u32 = 1;
/// The first container version whose byte 14 is a format tag (other formats than Tiled-CSL).
pub(crate) const VERSION_TAGGED: u32 = 5;
/// Format tag of the bitmap format (`super::bitmap`) with its earlier block-major tiles, in
/// files of versions 5 and 6 (read, repacked, never written).
pub(crate) const FORMAT_TAG_BITMAP: u16 = 1;
/// Format tag of the bitmap format with lane-major tiles of one value segment, in files of
/// version 6 (read, repacked, never written).
pub(crate) const FORMAT_TAG_BITMAP_LANES: u16 = 2;
/// Format tag of the bitmap format with today's tiles (lane-major, two value segments),
/// from version 6 on.
pub(crate) const FORMAT_TAG_BITMAP_SEGMENTS: u16 = 3;
/// Bytes of the fixed header, checksum included.
pub const HEADER_BYTES: usize = 56;
/// Bytes covered by the header checksum.
pub(crate) const HEADER_SUMMED: usize = 48;
/// Flag bit: the words are bank-reordered.
const FLAG_REORDERED: u8 = 1;
/// Words encoded or decoded per piece when streaming a section (at most).
const IO_PIECE_WORDS: usize = 1 << 16;
/// Words of the first piece read of a section: later pieces double up to
/// [`IO_PIECE_WORDS`], so what is allocated follows what actually arrives.
const FIRST_PIECE_WORDS: usize = 1 << 10;

/// Streaming FNV-1a 64-bit hash.
#[derive(Clone, Copy, Debug)]
pub struct Fnv1a64(u64);

impl Fnv1a64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    /// A hasher in the initial state.
    pub const fn new() -> Self {
        Fnv1a64(Self::OFFSET_BASIS)
    }

    /// Feeds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(Self::PRIME);
        }
    }

    /// The hash of everything fed so far.
    pub const fn finish(self) -> u64 {
        self.0
    }
}

impl Default for Fnv1a64 {
    fn default() -> Self {
        Self::new()
    }
}

/// FNV-1a 64 of `bytes`.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h = Fnv1a64::new();
    h.update(bytes);
    h.finish()
}

/// The checksum a file of `version` stores for `bytes`: XXH3-64 from version 6 on, FNV-1a 64
/// before.
pub fn checksum(version: u32, bytes: &[u8]) -> u64 {
    let mut h = SectionHash::new(version);
    h.update(bytes);
    h.finish()
}

/// A section's checksum, computed as its bytes stream by.
enum SectionHash {
    Fnv(Fnv1a64),
    Xxh3(Box<xxhash_rust::xxh3::Xxh3>),
}

impl SectionHash {
    fn new(version: u32) -> Self {
        if version >= VERSION {
            SectionHash::Xxh3(Box::default())
        } else {
            SectionHash::Fnv(Fnv1a64::new())
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        match self {
            SectionHash::Fnv(h) => h.update(bytes),
            SectionHash::Xxh3(h) => h.update(bytes),
        }
    }

    fn finish(&self) -> u64 {
        match self {
            SectionHash::Fnv(h) => h.finish(),
            SectionHash::Xxh3(h) => h.digest(),
        }
    }
}

const fn dtype_code(d: Dtype) -> u8 {
    match d {
        Dtype::F16 => 0,
        Dtype::Bf16 => 1,
    }
}

/// Bytes of a container holding `tiles + 1` offsets and `n_words` data words: the header,
/// both sections and their checksums (checked arithmetic; shared by every format's loader).
pub(crate) fn container_len(tiles: usize, n_words: usize) -> Result<usize> {
    let f = Sizes::FILE;
    let offsets = f.mul("tile_offsets bytes (4 · n_offsets)", 4, f.add("n_offsets", tiles, 1)?)?;
    let words = f.mul("data bytes (4 · n_words)", 4, n_words)?;
    f.add("file length", HEADER_BYTES + 16, f.add("section bytes", offsets, words)?)
}

/// Writes a complete file from raw parts (no validation; `save` passes valid parts).
fn write_parts<W: Write>(
    w: W,
    version: u32,
    dtype: Dtype,
    flags: u8,
    rows: u64,
    cols: u64,
    offsets: &[u32],
    words: &[u32],
) -> Result<()> {
    write_container(w, version, 0, dtype, flags, rows, cols, offsets, words)
}

/// Writes a complete container: the header (with format tag `tag` at byte 14), the offsets
/// section and the data section, each with its checksum (no validation).
pub(crate) fn write_container<W: Write>(
    mut w: W,
    version: u32,
    tag: u16,
    dtype: Dtype,
    flags: u8,
    rows: u64,
    cols: u64,
    offsets: &[u32],
    words: &[u32],
) -> Result<()> {
    let mut header = Vec::with_capacity(HEADER_BYTES);
    header.extend_from_slice(&MAGIC);
    header.extend_from_slice(&version.to_le_bytes());
    header.push(dtype_code(dtype));
    header.push(flags);
    header.extend_from_slice(&tag.to_le_bytes());
    header.extend_from_slice(&rows.to_le_bytes());
    header.extend_from_slice(&cols.to_le_bytes());
    header.extend_from_slice(&(offsets.len() as u64).to_le_bytes());
    header.extend_from_slice(&(words.len() as u64).to_le_bytes());
    let sum = checksum(version, &header);
    header.extend_from_slice(&sum.to_le_bytes());
    debug_assert_eq!(header.len(), HEADER_BYTES);
    w.write_all(&header)?;
    write_section(&mut w, version, offsets)?;
    write_section(&mut w, version, words)?;
    w.flush()?;
    Ok(())
}

/// Writes `data` as little-endian u32s followed by their checksum.
fn write_section<W: Write>(w: &mut W, version: u32, data: &[u32]) -> Result<()> {
    let mut hash = SectionHash::new(version);
    let mut buf = Vec::with_capacity(4 * IO_PIECE_WORDS.min(data.len()));
    for piece in data.chunks(IO_PIECE_WORDS) {
        buf.clear();
        for v in piece {
            buf.extend_from_slice(&v.to_le_bytes());
        }
        hash.update(&buf);
        w.write_all(&buf)?;
    }
    w.write_all(&hash.finish().to_le_bytes())?;
    Ok(())
}

/// `read_exact` that reports a short read as a truncated file.
pub(crate) fn read_exact_or_truncated<R: Read>(r: &mut R, buf: &mut [u8], what: &str) -> Result<()> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        ErrorKind::UnexpectedEof => Error::Format(format!("truncated file: {what} ends early")),
        _ => Error::Io(e),
    })
}

/// Reads `n` little-endian u32s, then the section checksum (of a file of `version`), and
/// verifies it.
///
/// Memory follows the data, never the count a header claims: pieces start at
/// [`FIRST_PIECE_WORDS`] and double up to [`IO_PIECE_WORDS`], and the output grows as pieces
/// arrive, so a short input with a huge count fails with a few KiB allocated. Only when
/// `reserve` (the caller checked the file's length against the header) is the whole output
/// allocated up front.
pub(crate) fn read_section<R: Read>(r: &mut R, version: u32, n: usize, name: &str, reserve: bool) -> Result<Vec<u32>> {
    let mut out = Vec::with_capacity(if reserve { n } else { n.min(FIRST_PIECE_WORDS) });
    let mut hash = SectionHash::new(version);
    let mut piece = n.min(FIRST_PIECE_WORDS);
    let mut buf = vec![0u8; 4 * piece];
    let mut left = n;
    while left > 0 {
        let take = left.min(piece);
        if 4 * take > buf.len() {
            buf.resize(4 * take, 0);
        }
        let bytes = &mut buf[..4 * take];
        read_exact_or_truncated(r, bytes, &format!("the {name} section"))?;
        hash.update(bytes);
        out.extend(
            bytes
                .chunks_exact(4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        );
        left -= take;
        piece = (2 * piece).min(IO_PIECE_WORDS);
    }
    let mut sum = [0u8; 8];
    read_exact_or_truncated(r, &mut sum, &format!("the {name} checksum"))?;
    if u64::from_le_bytes(sum) != hash.finish() {
        return Err(Error::Format(format!(
            "{name} section checksum mismatch (corrupt file)"
        )));
    }
    Ok(out)
}

/// Little-endian field readers over the fixed header (indices are constants in range).
pub(crate) fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
pub(crate) fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
pub(crate) fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// The fixed header's fields, checked by [`parse_header`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Header {
    version: u32,
    reordered: bool,
    rows: usize,
    cols: usize,
    /// `ceil(rows/256) · ceil(cols/64)`; the offsets section has `tiles + 1` entries.
    tiles: usize,
    n_words: usize,
}

impl Header {
    /// Bytes of the whole file the header describes: header, `4 · (tiles + 1)` bytes of
    /// offsets and their checksum, `4 · n_words` bytes of words and theirs.
    fn file_len(&self) -> Result<usize> {
        container_len(self.tiles, self.n_words)
    }
}

/// Checks the fixed header of a file read as `T`, in the order the [module docs](self)
/// give, with checked arithmetic on every field ([`Sizes::FILE`]); reads nothing else.
fn parse_header<T: Element>(h: &[u8; HEADER_BYTES]) -> Result<Header> {
    if h[..8] != MAGIC {
        return Err(Error::Format("not a sparse weight file (bad magic)".into()));
    }
    let version = le_u32(h, 8);
    if version == VERSION_64X64_TILES {
        return Err(Error::Format(format!(
            "file version {version} uses 64×64 tiles, but the tile geometry changed to \
             {TILE_M}×{TILE_K} in version {VERSION_ROW_SWIZZLED}; re-encode the weight (this \
             library reads versions {VERSION_ROW_SWIZZLED} to {VERSION})"
        )));
    }
    let tag = le_u16(h, 14);
    if (VERSION_TAGGED..=VERSION).contains(&version) && tag != 0 && le_u64(h, HEADER_SUMMED) == checksum(version, &h[..HEADER_SUMMED]) {
        return Err(Error::Format(match tag {
            FORMAT_TAG_BITMAP | FORMAT_TAG_BITMAP_LANES | FORMAT_TAG_BITMAP_SEGMENTS => {
                format!("this file holds a bitmap weight (version {version}, format tag {tag}): load it with BitmapWeight::load")
            }
            _ => format!("unknown format tag {tag} in a version-{version} file"),
        }));
    }
    if !(VERSION_ROW_SWIZZLED..=VERSION).contains(&version) || version == VERSION_TAGGED {
        return Err(Error::Format(format!(
            "unsupported file version {version} (Tiled-CSL files are versions \
             {VERSION_ROW_SWIZZLED} to {VERSION_FRAG_B} and {VERSION})"
        )));
    }
    if le_u64(h, HEADER_SUMMED) != checksum(version, &h[..HEADER_SUMMED]) {
        return Err(Error::Format(
            "header checksum mismatch (corrupt file)".into(),
        ));
    }
    let dtype = match h[12] {
        0 => Dtype::F16,
        1 => Dtype::Bf16,
        code => return Err(Error::Format(format!("unknown dtype code {code} in file"))),
    };
    if dtype != T::DTYPE {
        return Err(Error::UnsupportedDtype(format!(
            "file holds {} weights, but {} was requested",
            dtype.name(),
            T::DTYPE.name()
        )));
    }
    let flags = h[13];
    if flags & !FLAG_REORDERED != 0 {
        return Err(Error::Format(format!("unknown flag bits {flags:#04x}")));
    }
    let reserved = le_u16(h, 14);
    if reserved != 0 {
        return Err(Error::Format(format!(
            "reserved header field is {reserved}, expected 0"
        )));
    }
    let rows = Sizes::FILE.to_usize("rows", le_u64(h, 16))?;
    let cols = Sizes::FILE.to_usize("cols", le_u64(h, 24))?;
    let (_, _, tiles) =
        tile_grid(rows, cols).map_err(|e| Error::Format(format!("file header: {e}")))?;
    let n_offsets = le_u64(h, 32);
    // `tile_grid` checked that `tiles + 1` fits.
    let expected_offsets = Sizes::FILE.add("n_offsets", tiles, 1)?;
    if usize::try_from(n_offsets) != Ok(expected_offsets) {
        return Err(Error::Format(format!(
            "header says {n_offsets} tile offsets, but a {rows}×{cols} weight has {expected_offsets}"
        )));
    }
    let n_words = le_u64(h, 40);
    // An upper bound, not a size: a tile holds at most TILE_ELEMS words, and offsets are
    // u32, so no weight has more than u32::MAX words.
    let max_words = (tiles as u64)
        .saturating_mul(TILE_ELEMS as u64)
        .min(u64::from(u32::MAX));
    if n_words > max_words || !n_words.is_multiple_of(WORDS_PER_LOAD as u64) {
        return Err(Error::Format(format!(
            "header says {n_words} words; a {rows}×{cols} weight has a multiple of 4 up \
             to {max_words}"
        )));
    }
    let n_words = Sizes::FILE.to_usize("n_words", n_words)?; // <= u32::MAX
    Ok(Header { version, reordered: flags & FLAG_REORDERED != 0, rows, cols, tiles, n_words })
}

impl<T: Element> SparseWeight<T> {
    /// Writes the weight in the file format documented in [this module](self).
    pub fn save<W: Write>(&self, w: W) -> Result<()> {
        let flags = if self.reordered { FLAG_REORDERED } else { 0 };
        write_parts(
            w,
            VERSION,
            T::DTYPE,
            flags,
            self.rows as u64,
            self.cols as u64,
            &self.tile_offsets,
            &self.words,
        )
    }

    /// Reads and fully validates a weight written by [`save`](Self::save).
    ///
    /// Reads version-2 to -4 files too, converting the positions of versions 2 and 3 (see the
    /// [module docs](self)).
    ///
    /// Errors: [`Error::Format`] for a wrong magic, a version other than 2–4 or [`VERSION`] (a
    /// version-1 file, with 64×64 tiles, gets a message saying the tile geometry changed),
    /// dtype different from `T`,
    /// checksum mismatch (naming the section), truncation, trailing bytes, or arrays that
    /// [`from_parts`](Self::from_parts) rejects; [`Error::Io`] if the reader fails.
    pub fn load<R: Read>(r: R) -> Result<Self> {
        Self::load_sized(r, None)
    }

    /// [`load`](Self::load) from a reader holding `len` bytes when known: the length the
    /// header describes ([`Header::file_len`]) must then equal it, which is checked before
    /// anything but the 56-byte header is read or allocated.
    fn load_sized<R: Read>(mut r: R, len: Option<u64>) -> Result<Self> {
        let mut h = [0u8; HEADER_BYTES];
        read_exact_or_truncated(&mut r, &mut h, "the header")?;
        let header = parse_header::<T>(&h)?;
        let Header { version, reordered, rows, cols, tiles, n_words } = header;
        if let Some(len) = len {
            // usize → u64 is lossless on every supported platform.
            let expected = header.file_len()? as u64;
            if len != expected {
                let what = if len < expected { "truncated file" } else { "trailing bytes" };
                return Err(Error::Format(format!(
                    "{what}: the header describes a {rows}×{cols} weight of {n_words} words, {expected} bytes \
                     in all, but the file has {len} bytes"
                )));
            }
        }
        let reserve = len.is_some();
        let offsets = read_section(&mut r, version, tiles + 1, "tile_offsets", reserve)?;
        validate_offsets(tiles, &offsets, n_words)?;
        let mut words = read_section(&mut r, version, n_words, "words", reserve)?;
        let mut probe = [0u8; 1];
        loop {
            match r.read(&mut probe) {
                Ok(0) => break,
                Ok(_) => {
                    return Err(Error::Format(
                        "trailing bytes after the words checksum".into(),
                    ))
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::Io(e)),
            }
        }
        if version < VERSION_FRAG_B {
            let coord = if version == VERSION_ROW_SWIZZLED { layout::unswizzle_pos } else { frag_a_native_coord };
            for w in &mut words {
                let pos = usize::from(word_pos(*w));
                if pos >= TILE_ELEMS {
                    return Err(Error::Format(format!(
                        "word position {pos} is outside the {TILE_M}×{TILE_K} tile"
                    )));
                }
                let (r, c) = coord(pos);
                *w = pack_word(tile_pos(r, c), word_bits(*w));
            }
            let mut weight = Self::from_parts(rows, cols, offsets, words, false)?;
            if reordered {
                weight.reorder_for_banks();
            }
            return Ok(weight);
        }
        Self::from_parts(rows, cols, offsets, words, reordered)
    }

    /// [`save`](Self::save) to a file (created or truncated).
    pub fn save_file(&self, path: impl AsRef<Path>) -> Result<()> {
        let file = std::fs::File::create(path)?;
        self.save(std::io::BufWriter::new(file))
    }

    /// [`load`](Self::load) from a file. The file's length must be the one its header
    /// describes, which is checked before the sections are read.
    pub fn load_file(path: impl AsRef<Path>) -> Result<Self> {
        let file = std::fs::File::open(path)?;
        let len = file.metadata()?.len();
        Self::load_sized(std::io::BufReader::new(file), Some(len))
    }
}

/// The tile-local `(row, col)` of a version-3 position: 16×16 blocks of 256 positions as
/// today, inside a block position `e` being half `e % 8` of lane `e / 8`'s 16-byte A
/// fragment ([`layout::frag_a_coord`]).
fn frag_a_native_coord(pos: usize) -> (usize, usize) {
    let block = pos / 256;
    let (r, c) = layout::frag_a_coord((pos / 8) % 32, pos % 8);
    ((block / (TILE_K / 16)) * 16 + r, (block % (TILE_K / 16)) * 16 + c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sparse::test_util::{random_sparse, Rng};
    use half::{bf16, f16};
    use proptest::prelude::*;

    fn small_file() -> (SparseWeight<f16>, Vec<u8>) {
        let mut rng = Rng::new(7);
        // 2×2 tiles of 256×64, three of them partial; small enough for the exhaustive tests.
        let dense = random_sparse::<f16>(&mut rng, 300, 90, 0.97);
        let w = SparseWeight::from_dense(300, 90, &dense).unwrap();
        assert_eq!(w.num_tiles(), 4);
        let mut bytes = Vec::new();
        w.save(&mut bytes).unwrap();
        (w, bytes)
    }

    fn format_err<T: std::fmt::Debug>(r: Result<T>) -> String {
        match r {
            Err(Error::Format(msg)) => msg,
            other => panic!("expected Error::Format, got {other:?}"),
        }
    }

    #[test]
    fn fnv_known_values() {
        // Reference values of FNV-1a 64.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
        // XXH3-64 (version 6 on): the reference value of the empty input, and every version's
        // choice.
        assert_eq!(checksum(VERSION, b""), 0x2d06_8005_38d3_94c2);
        assert_eq!(checksum(4, b"foobar"), fnv1a64(b"foobar"));
        assert_eq!(checksum(5, b"foobar"), fnv1a64(b"foobar"));
        assert_ne!(checksum(6, b"foobar"), fnv1a64(b"foobar"));
    }

    #[test]
    fn layout_matches_the_table() {
        let (w, bytes) = small_file();
        let n_off = w.tile_offsets().len();
        let n_words = w.words().len();
        assert_eq!(bytes.len(), HEADER_BYTES + 4 * n_off + 8 + 4 * n_words + 8);
        assert_eq!(&bytes[..8], b"STCSPW\0\0");
        assert_eq!(le_u32(&bytes, 8), 6);
        assert_eq!(bytes[12], 0);
        assert_eq!(bytes[13], 0);
        assert_eq!(le_u16(&bytes, 14), 0);
        assert_eq!(le_u64(&bytes, 16), 300);
        assert_eq!(le_u64(&bytes, 24), 90);
        assert_eq!(le_u64(&bytes, 32), n_off as u64);
        assert_eq!(n_off, 300usize.div_ceil(256) * 90usize.div_ceil(64) + 1);
        assert_eq!(le_u64(&bytes, 40), n_words as u64);
        assert_eq!(le_u64(&bytes, 48), checksum(VERSION, &bytes[..48]));
        let off_end = HEADER_BYTES + 4 * n_off;
        assert_eq!(le_u32(&bytes, HEADER_BYTES + 4), w.tile_offsets()[1]);
        assert_eq!(
            le_u64(&bytes, off_end),
            checksum(VERSION, &bytes[HEADER_BYTES..off_end])
        );
        let words_at = off_end + 8;
        assert_eq!(le_u32(&bytes, words_at), w.words()[0]);
        let end = bytes.len() - 8;
        assert_eq!(le_u64(&bytes, end), checksum(VERSION, &bytes[words_at..end]));
    }

    #[test]
    fn every_single_byte_corruption_is_rejected() {
        let (_, bytes) = small_file();
        let mut corrupt = bytes.clone();
        let mut checked = 0;
        for i in 0..bytes.len() {
            for mask in [0x01u8, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0xff] {
                corrupt[i] = bytes[i] ^ mask;
                let msg = format_err(SparseWeight::<f16>::load(&corrupt[..]));
                assert!(!msg.is_empty());
                checked += 1;
            }
            corrupt[i] = bytes[i];
        }
        assert_eq!(checked, 9 * bytes.len());
    }

    #[test]
    fn every_truncation_is_rejected() {
        let (w, bytes) = small_file();
        for len in 0..bytes.len() {
            let msg = format_err(SparseWeight::<f16>::load(&bytes[..len]));
            assert!(msg.contains("truncated"), "length {len}: {msg}");
        }
        assert_eq!(SparseWeight::<f16>::load(&bytes[..]).unwrap(), w);
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let (_, bytes) = small_file();
        for extra in [&[0u8][..], &[1, 2, 3], &[0; 100]] {
            let mut b = bytes.clone();
            b.extend_from_slice(extra);
            let msg = format_err(SparseWeight::<f16>::load(&b[..]));
            assert!(msg.contains("trailing"), "{msg}");
        }
    }

    #[test]
    fn dtype_mismatch_names_the_file_dtype() {
        fn dtype_err<T: std::fmt::Debug>(r: Result<T>) -> String {
            match r {
                Err(Error::UnsupportedDtype(msg)) => msg,
                other => panic!("expected Error::UnsupportedDtype, got {other:?}"),
            }
        }
        let (_, bytes) = small_file();
        let msg = dtype_err(SparseWeight::<bf16>::load(&bytes[..]));
        assert!(msg.contains("file holds f16"), "{msg}");
        let dense = vec![bf16::ONE; 4];
        let w = SparseWeight::from_dense(2, 2, &dense).unwrap();
        let mut b = Vec::new();
        w.save(&mut b).unwrap();
        let msg = dtype_err(SparseWeight::<f16>::load(&b[..]));
        assert!(msg.contains("file holds bf16"), "{msg}");
    }

    #[test]
    fn specific_header_errors() {
        let (_, bytes) = small_file();
        let mut b = bytes.clone();
        b[0] = b'X';
        assert!(format_err(SparseWeight::<f16>::load(&b[..])).contains("magic"));
        let mut b = bytes.clone();
        b[8] = 5;
        assert!(format_err(SparseWeight::<f16>::load(&b[..])).contains("version 5"));
        let mut b = bytes.clone();
        b[20] ^= 1;
        assert!(format_err(SparseWeight::<f16>::load(&b[..])).contains("header checksum"));
        let mut b = bytes.clone();
        b[HEADER_BYTES] ^= 1;
        assert!(format_err(SparseWeight::<f16>::load(&b[..])).contains("tile_offsets section"));
        let mut b = bytes.clone();
        let n = b.len();
        b[n - 9] ^= 1;
        assert!(format_err(SparseWeight::<f16>::load(&b[..])).contains("words section"));
    }

    /// A file with valid checksums around arbitrary header values and arrays.
    #[allow(clippy::too_many_arguments)]
    fn raw_file(
        dtype: Dtype,
        flags: u8,
        rows: u64,
        cols: u64,
        offsets: &[u32],
        words: &[u32],
        n_offsets: Option<u64>,
        n_words: Option<u64>,
    ) -> Vec<u8> {
        let mut b = Vec::new();
        write_parts(&mut b, VERSION, dtype, flags, rows, cols, offsets, words).unwrap();
        if let Some(n) = n_offsets {
            b[32..40].copy_from_slice(&n.to_le_bytes());
        }
        if let Some(n) = n_words {
            b[40..48].copy_from_slice(&n.to_le_bytes());
        }
        let sum = checksum(le_u32(&b, 8), &b[..48]);
        b[48..56].copy_from_slice(&sum.to_le_bytes());
        b
    }

    #[test]
    fn version_1_files_are_rejected_as_old_tile_geometry() {
        // A well-formed version-1 file (valid checksums) of a 64×64 weight: one 64×64 tile.
        let (_, bytes) = small_file();
        let mut b = raw_file(
            Dtype::F16,
            0,
            64,
            64,
            &[0, 4],
            &[crate::sparse::pack_word(0, 0x3c00); 4],
            None,
            None,
        );
        b[8..12].copy_from_slice(&1u32.to_le_bytes());
        let sum = checksum(le_u32(&b, 8), &b[..48]);
        b[48..56].copy_from_slice(&sum.to_le_bytes());
        for file in [&b[..], &b[..HEADER_BYTES]] {
            let msg = format_err(SparseWeight::<f16>::load(file));
            assert!(msg.contains("version 1"), "{msg}");
            assert!(msg.contains("tile geometry changed"), "{msg}");
            assert!(msg.contains("256×64"), "{msg}");
        }
        // Also a current file relabelled as version 1 (checksum not even looked at).
        let mut b = bytes.clone();
        b[8] = 1;
        assert!(format_err(SparseWeight::<f16>::load(&b[..])).contains("tile geometry"));
    }

    /// Version 3's position of tile entry `(r, c)`, by inverting [`frag_a_native_coord`]
    /// over the whole tile (which also checks that it is a bijection).
    fn frag_a_native_positions() -> Vec<u16> {
        let mut pos = vec![u16::MAX; TILE_ELEMS];
        for p in 0..TILE_ELEMS {
            let (r, c) = frag_a_native_coord(p);
            assert_eq!(pos[r * TILE_K + c], u16::MAX, "two positions of ({r}, {c})");
            pos[r * TILE_K + c] = p as u16;
        }
        pos
    }

    #[test]
    fn version_2_and_3_files_are_converted_to_fragment_native_positions() {
        // A weight written as version 2 (row-swizzled positions) or 3 (A-fragment-native
        // positions) loads as the same weight, reordered again when the file says it was.
        let mut rng = Rng::new(11);
        let (rows, cols) = (300, 130);
        let dense = random_sparse::<f16>(&mut rng, rows, cols, 0.7);
        let v3 = frag_a_native_positions();
        for (version, reorder) in [(2, false), (2, true), (3, false), (3, true)] {
            let mut w = SparseWeight::<f16>::from_dense(rows, cols, &dense).unwrap();
            if reorder {
                w.reorder_for_banks();
            }
            let old: Vec<u32> = w
                .words()
                .iter()
                .map(|&x| {
                    let (r, c) = layout::frag_pos_inverse(usize::from(word_pos(x)));
                    let pos = if version == 2 { layout::swizzled_pos(r, c) as u16 } else { v3[r * TILE_K + c] };
                    pack_word(pos, word_bits(x))
                })
                .collect();
            let flags = if reorder { FLAG_REORDERED } else { 0 };
            let mut b = Vec::new();
            write_parts(&mut b, version, Dtype::F16, flags, rows as u64, cols as u64, w.tile_offsets(), &old).unwrap();
            let back = SparseWeight::<f16>::load(&b[..]).unwrap();
            assert_eq!(back.to_dense(), dense);
            assert_eq!(back.is_reordered(), reorder);
            // Same list (reordering is idempotent, so a reordered weight stays as it was).
            assert_eq!(back.words(), w.words());
            // A position outside the tile is an error, not wrapped into it.
            let mut bad = old.clone();
            bad[0] = pack_word(u16::MAX, 0x3c00);
            let mut b = Vec::new();
            write_parts(&mut b, version, Dtype::F16, flags, rows as u64, cols as u64, w.tile_offsets(), &bad).unwrap();
            assert!(format_err(SparseWeight::<f16>::load(&b[..])).contains("outside"));
        }
    }

    #[test]
    fn version_4_files_with_fnv_checksums_still_load() {
        // Version 4 had today's positions and FNV-1a 64 checksums; a flipped byte is still
        // caught by its own checksum.
        let (w, _) = small_file();
        let mut b = Vec::new();
        write_parts(&mut b, 4, Dtype::F16, 0, w.rows() as u64, w.cols() as u64, w.tile_offsets(), w.words()).unwrap();
        assert_eq!(le_u64(&b, 48), fnv1a64(&b[..48]));
        let back = SparseWeight::<f16>::load(&b[..]).unwrap();
        assert_eq!(back.words(), w.words());
        let last = b.len() - 9;
        b[last] ^= 1;
        assert!(format_err(SparseWeight::<f16>::load(&b[..])).contains("checksum"));
    }

    #[test]
    fn huge_or_inconsistent_headers_fail_fast() {
        // 2^31 × 2^31 with a consistent offsets count (2^23 · 2^25 tiles of 256×64, + 1) and
        // no body: must report truncation instead of trying to allocate petabytes.
        let tiles = (1u64 << 31).div_ceil(256) * (1u64 << 31).div_ceil(64);
        assert_eq!(tiles, 1 << 48);
        let b = raw_file(
            Dtype::F16,
            0,
            1 << 31,
            1 << 31,
            &[],
            &[],
            Some(tiles + 1),
            Some(0),
        );
        let b = &b[..HEADER_BYTES];
        assert!(format_err(SparseWeight::<f16>::load(b)).contains("truncated"));
        // Offsets count not implied by the dimensions.
        let b = raw_file(Dtype::F16, 0, 64, 64, &[0, 0], &[], Some(1 << 40), None);
        assert!(format_err(SparseWeight::<f16>::load(&b[..])).contains("tile offsets"));
        // Too many words for the tile count: one 256×64 tile holds at most 16384.
        let b = raw_file(Dtype::F16, 0, 256, 64, &[0, 0], &[], None, Some(16388));
        let msg = format_err(SparseWeight::<f16>::load(&b[..]));
        assert!(
            msg.contains("16388 words") && msg.contains("up to 16384"),
            "{msg}"
        );
        let b = raw_file(
            Dtype::F16,
            0,
            300,
            70,
            &[0; 5],
            &[],
            None,
            Some(4 * 16384 + 4),
        );
        let msg = format_err(SparseWeight::<f16>::load(&b[..]));
        assert!(msg.contains("up to 65536"), "{msg}");
        // 16384 words pass the header check (and then disagree with the offsets).
        let b = raw_file(Dtype::F16, 0, 256, 64, &[0, 0], &[], None, Some(16384));
        assert!(format_err(SparseWeight::<f16>::load(&b[..])).contains("last tile offset"));
        // Zero rows, unknown flags, unknown dtype, overflowing dimensions.
        let b = raw_file(Dtype::F16, 0, 0, 64, &[0], &[], None, None);
        assert!(format_err(SparseWeight::<f16>::load(&b[..])).contains("1×1"));
        let b = raw_file(Dtype::F16, 2, 64, 64, &[0, 0], &[], None, None);
        assert!(format_err(SparseWeight::<f16>::load(&b[..])).contains("flag"));
        let mut b = raw_file(Dtype::F16, 0, 64, 64, &[0, 0], &[], None, None);
        b[12] = 7;
        let sum = checksum(le_u32(&b, 8), &b[..48]);
        b[48..56].copy_from_slice(&sum.to_le_bytes());
        assert!(format_err(SparseWeight::<f16>::load(&b[..])).contains("dtype code 7"));
        let b = raw_file(Dtype::F16, 0, u64::MAX, u64::MAX, &[0, 0], &[], None, None);
        let msg = format_err(SparseWeight::<f16>::load(&b[..]));
        assert!(msg.contains("rows × cols") && msg.contains("usize::MAX"), "{msg}");
    }

    #[test]
    fn content_validation_runs_after_checksums() {
        // Valid checksums, but the single word of a 10×10 weight addresses row 20.
        let bad = crate::sparse::pack_word(crate::sparse::tile_pos(20, 0), 0x3c00);
        let b = raw_file(Dtype::F16, 0, 10, 10, &[0, 4], &[bad; 4], None, None);
        assert!(format_err(SparseWeight::<f16>::load(&b[..])).contains("outside"));
        // Offsets not multiple of 4.
        let ok = crate::sparse::pack_word(0, 0x3c00);
        let b = raw_file(Dtype::F16, 0, 10, 10, &[0, 2], &[ok; 2], None, None);
        assert!(format_err(SparseWeight::<f16>::load(&b[..])).contains("multiple of 4"));
    }

    #[test]
    fn file_round_trip_on_disk() {
        let mut rng = Rng::new(99);
        let dense = random_sparse::<bf16>(&mut rng, 300, 65, 0.7);
        let mut w = SparseWeight::from_dense(300, 65, &dense).unwrap();
        w.reorder_for_banks();
        let dir = std::env::temp_dir().join(format!("sparse_tc_file_test_{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("w.stcw");
        w.save_file(&path).unwrap();
        let back = SparseWeight::<bf16>::load_file(&path).unwrap();
        std::fs::remove_dir_all(&dir).ok();
        assert_eq!(back, w);
        assert!(back.is_reordered());
        assert_eq!(back.to_dense(), dense);
        assert!(matches!(
            SparseWeight::<bf16>::load_file(dir.join("missing")),
            Err(Error::Io(_))
        ));
    }

    #[test]
    fn load_file_checks_the_length_before_reading_on() {
        let (w, bytes) = small_file();
        let h: &[u8; HEADER_BYTES] = bytes[..HEADER_BYTES].try_into().unwrap();
        assert_eq!(parse_header::<f16>(h).unwrap().file_len().unwrap(), bytes.len());
        let dir = std::env::temp_dir().join(format!("sparse_tc_file_len_test_{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("w.stcw");
        let load = |contents: &[u8]| {
            std::fs::write(&path, contents).unwrap();
            SparseWeight::<f16>::load_file(&path)
        };
        assert_eq!(load(&bytes).unwrap(), w);
        // Shorter or longer than the header says: refused from the header and the length alone.
        let short = format_err(load(&bytes[..bytes.len() - 1]));
        let long = format_err(load(&[&bytes[..], &[0u8; 9]].concat()));
        // A header claiming 2³² − 4 words in front of a few bytes.
        let huge = raw_file(Dtype::F16, 0, 1 << 20, 1 << 20, &[0, 0], &[], Some((1 << 26) + 1), Some(u64::from(u32::MAX) - 3));
        let huge = format_err(load(&huge));
        std::fs::remove_dir_all(&dir).ok();
        let len = bytes.len();
        assert!(short.contains("truncated") && short.contains(&format!("{len} bytes in all")), "{short}");
        assert!(short.contains(&format!("has {} bytes", len - 1)), "{short}");
        assert!(long.contains("trailing bytes") && long.contains(&format!("has {} bytes", len + 9)), "{long}");
        assert!(huge.contains("truncated") && huge.contains("4294967292 words"), "{huge}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn save_load_round_trip(
            rows in 1usize..600, cols in 1usize..200, sparsity in 0.0f64..=1.0,
            seed: u64, reorder: bool,
        ) {
            let mut rng = Rng::new(seed);
            let dense = random_sparse::<f16>(&mut rng, rows, cols, sparsity);
            let mut w = SparseWeight::from_dense(rows, cols, &dense).unwrap();
            if reorder { w.reorder_for_banks(); }
            let mut bytes = Vec::new();
            w.save(&mut bytes).unwrap();
            let back = SparseWeight::<f16>::load(&bytes[..]).unwrap();
            prop_assert_eq!(&back, &w);
            prop_assert_eq!(back.is_reordered(), reorder);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = SparseWeight::<f16>::load(&bytes[..]);
            // Also behind a valid-looking header prefix.
            let mut b = MAGIC.to_vec();
            b.extend_from_slice(&bytes);
            prop_assert!(SparseWeight::<bf16>::load(&b[..]).is_err());
        }
    }
}
