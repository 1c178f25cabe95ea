//! Bitmap weight files: the container of [`crate::sparse::file`] (same magic, header,
//! sections and checksums) with format tag 3 and version 6 (XXH3-64 checksums). Files of
//! the earlier layouts (`super::legacy`) still load, checked by their rules and repacked in
//! today's layout (saving such a weight writes format tag 3): format tag 2 (lane-major tiles
//! with one value segment, version 6) and format tag 1 (block-major tiles, version 6 or
//! version 5 with FNV-1a 64 checksums).
//!
//! | offset            | size             | field                                               |
//! |-------------------|------------------|-----------------------------------------------------|
//! | 0                 | 8                | magic `b"STCSPW\0\0"`                               |
//! | 8                 | 4 (u32)          | version, = 6 (5 is read too, with format tag 1)     |
//! | 12                | 1 (u8)           | dtype: 0 = f16, 1 = bf16                            |
//! | 13                | 1 (u8)           | flags, = 0                                          |
//! | 14                | 2 (u16)          | format tag, = 3 (bitmap; 2, 1: earlier tiles)       |
//! | 16                | 8 (u64)          | rows (M), ≥ 1                                       |
//! | 24                | 8 (u64)          | cols (K), ≥ 1                                       |
//! | 32                | 8 (u64)          | n_offsets = ceil(M/64)·ceil(K/64) + 1               |
//! | 40                | 8 (u64)          | n_words: data words, a multiple of 4, 200·tiles ..= 2248·tiles (tag 2: 168 ..= 2216, tag 1: 136 ..= 2184 per tile) |
//! | 48                | 8 (u64)          | checksum of bytes 0..48                             |
//! | 56                | 4 · n_offsets    | tile_offsets (quads), u32 each                      |
//! | 56 + 4·n_offsets  | 8 (u64)          | checksum of the tile_offsets bytes                  |
//! | 64 + 4·n_offsets  | 4 · n_words      | data, u32 each (the tiles, see [`super`])           |
//! | end − 8           | 8 (u64)          | checksum of the data bytes                          |
//!
//! [`BitmapWeight::load`] checks magic, version and format tag, header checksum, dtype,
//! flags, then the dimensions and the counts they imply with checked arithmetic, *before*
//! it allocates anything: [`BitmapWeight::load_file`] compares the file length with the
//! length the header describes, and from a plain reader sections are read in growing pieces
//! (memory follows the bytes that arrive, not the counts a header claims). Then the section
//! checksums, no trailing bytes, and everything [`BitmapWeight::from_parts`] checks (for
//! format tags 2 and 1, the same rules of the old layout). Every failure is an [`Error::Format`]
//! ([`Error::UnsupportedDtype`] for the other element type, [`Error::Io`] for a failing
//! reader); it never panics. A Tiled-CSL file (versions 2–4, or format tag 0) is refused
//! with a message saying so.

use std::io::{ErrorKind, Read, Write};
use std::path::Path;

use super::legacy::{BLOCK_MAJOR, LANE_MAJOR_ONE_SEGMENT};
use super::{tile_grid, BitmapWeight, TileLayout, LANE_MAJOR, QUAD_WORDS, TILE};
use crate::checked::Sizes;
use crate::element::{Dtype, Element};
use crate::error::{Error, Result};
use crate::sparse::file::{
    checksum, le_u16, le_u32, le_u64, read_exact_or_truncated, read_section, write_container, FORMAT_TAG_BITMAP,
    FORMAT_TAG_BITMAP_LANES, FORMAT_TAG_BITMAP_SEGMENTS, HEADER_BYTES, HEADER_SUMMED, MAGIC, VERSION_TAGGED,
};

/// The container version bitmap files are written with (version 5 files of format tag 1
/// load too).
pub const VERSION: u32 = crate::sparse::file::VERSION;
/// The format tag of bitmap files (byte 14): today's tiles (lane-major, two value segments).
pub const FORMAT_TAG: u16 = FORMAT_TAG_BITMAP_SEGMENTS;
/// The format tag of bitmap files with lane-major tiles of one value segment (version 6;
/// read and repacked, never written).
pub const FORMAT_TAG_ONE_SEGMENT: u16 = FORMAT_TAG_BITMAP_LANES;
/// The format tag of bitmap files with the earlier block-major tiles (versions 5 and 6;
/// read and repacked, never written).
pub const FORMAT_TAG_BLOCK_MAJOR: u16 = FORMAT_TAG_BITMAP;

/// The checked header of a bitmap file.
#[derive(Clone, Copy, Debug)]
struct Header {
    version: u32,
    /// [`FORMAT_TAG`], [`FORMAT_TAG_ONE_SEGMENT`] or [`FORMAT_TAG_BLOCK_MAJOR`].
    tag: u16,
    rows: usize,
    cols: usize,
    tiles: usize,
    n_words: usize,
}

impl Header {
    /// Bytes of the whole file the header describes.
    fn file_len(&self) -> Result<usize> {
        crate::sparse::file::container_len(self.tiles, self.n_words)
    }
}

/// Checks the fixed header of a bitmap file read as `T`, reading nothing else.
fn parse_header<T: Element>(h: &[u8; HEADER_BYTES]) -> Result<Header> {
    if h[..8] != MAGIC {
        return Err(Error::Format("not a sparse weight file (bad magic)".into()));
    }
    let version = le_u32(h, 8);
    if (2..=4).contains(&version) {
        return Err(Error::Format(format!(
            "this file holds a Tiled-CSL weight (version {version}): load it with SparseWeight::load"
        )));
    }
    if version != VERSION && version != VERSION_TAGGED {
        return Err(Error::Format(format!("unsupported file version {version} (bitmap files are versions {VERSION_TAGGED} and {VERSION})")));
    }
    if le_u64(h, HEADER_SUMMED) != checksum(version, &h[..HEADER_SUMMED]) {
        return Err(Error::Format("header checksum mismatch (corrupt file)".into()));
    }
    let tag = le_u16(h, 14);
    if tag == 0 {
        return Err(Error::Format(format!(
            "this file holds a Tiled-CSL weight (version {version}, format tag 0): load it with SparseWeight::load"
        )));
    }
    let layout: &TileLayout = match tag {
        FORMAT_TAG if version == VERSION => &LANE_MAJOR,
        FORMAT_TAG_ONE_SEGMENT if version == VERSION => &LANE_MAJOR_ONE_SEGMENT,
        FORMAT_TAG | FORMAT_TAG_ONE_SEGMENT => {
            return Err(Error::Format(format!(
                "format tag {tag} (lane-major bitmap tiles) in a version-{version} file: those are version {VERSION}"
            )))
        }
        FORMAT_TAG_BLOCK_MAJOR => &BLOCK_MAJOR,
        _ => {
            return Err(Error::Format(format!(
                "format tag {tag} is not a bitmap format's ({FORMAT_TAG}; {FORMAT_TAG_ONE_SEGMENT} and \
                 {FORMAT_TAG_BLOCK_MAJOR} for earlier tiles)"
            )))
        }
    };
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
    if h[13] != 0 {
        return Err(Error::Format(format!("unknown flag bits {:#04x}", h[13])));
    }
    let rows = Sizes::FILE.to_usize("rows", le_u64(h, 16))?;
    let cols = Sizes::FILE.to_usize("cols", le_u64(h, 24))?;
    let (_, _, tiles) = tile_grid(rows, cols).map_err(|e| Error::Format(format!("file header: {e}")))?;
    let n_offsets = le_u64(h, 32);
    if usize::try_from(n_offsets) != Ok(tiles + 1) {
        return Err(Error::Format(format!(
            "header says {n_offsets} tile offsets, but a {rows}×{cols} weight has {}",
            tiles + 1
        )));
    }
    // Bounds, not sizes (u64, saturating): every tile is 50..=562 quads (tag 2: 42..=554,
    // tag 1: 34..=546), offsets are u32.
    let n_words = le_u64(h, 40);
    let quad = QUAD_WORDS as u64;
    let min = (tiles as u64).saturating_mul(layout.tile_quads(0) as u64 * quad);
    let max = (tiles as u64).saturating_mul(layout.tile_quads(TILE * TILE) as u64 * quad).min(u64::from(u32::MAX) * quad);
    if n_words < min || n_words > max || !n_words.is_multiple_of(quad) {
        return Err(Error::Format(format!(
            "header says {n_words} data words; a {rows}×{cols} bitmap weight has a multiple of {quad} in {min}..={max}"
        )));
    }
    let n_words = Sizes::FILE.to_usize("n_words", n_words)?;
    Ok(Header { version, tag, rows, cols, tiles, n_words })
}

impl<T: Element> BitmapWeight<T> {
    /// Writes the weight in the file format of [this module](self).
    pub fn save<W: Write>(&self, w: W) -> Result<()> {
        write_container(
            w,
            VERSION,
            FORMAT_TAG,
            T::DTYPE,
            0,
            self.rows as u64,
            self.cols as u64,
            &self.tile_offsets,
            &self.data,
        )
    }

    /// Reads and fully validates a weight written by [`save`](Self::save), or a file of the
    /// earlier tiles (format tags 2 and 1), repacked (see the [module docs](self) for what is
    /// checked, in which order).
    pub fn load<R: Read>(r: R) -> Result<Self> {
        Self::load_sized(r, None)
    }

    /// [`save`](Self::save) to a file (created or truncated).
    pub fn save_file(&self, path: impl AsRef<Path>) -> Result<()> {
        self.save(std::io::BufWriter::new(std::fs::File::create(path)?))
    }

    /// [`load`](Self::load) from a file, whose length must be the one its header describes
    /// (checked before the sections are read).
    pub fn load_file(path: impl AsRef<Path>) -> Result<Self> {
        let file = std::fs::File::open(path)?;
        let len = file.metadata()?.len();
        Self::load_sized(std::io::BufReader::new(file), Some(len))
    }

    fn load_sized<R: Read>(mut r: R, len: Option<u64>) -> Result<Self> {
        let mut h = [0u8; HEADER_BYTES];
        read_exact_or_truncated(&mut r, &mut h, "the header")?;
        let header = parse_header::<T>(&h)?;
        let Header { rows, cols, tiles, n_words, .. } = header;
        if let Some(len) = len {
            let expected = header.file_len()? as u64;
            if len != expected {
                let what = if len < expected { "truncated file" } else { "trailing bytes" };
                return Err(Error::Format(format!(
                    "{what}: the header describes a {rows}×{cols} bitmap weight of {n_words} data words, {expected} \
                     bytes in all, but the file has {len} bytes"
                )));
            }
        }
        let reserve = len.is_some();
        let offsets = read_section(&mut r, header.version, tiles + 1, "tile_offsets", reserve)?;
        let data = read_section(&mut r, header.version, n_words, "data", reserve)?;
        let mut probe = [0u8; 1];
        loop {
            match r.read(&mut probe) {
                Ok(0) => break,
                Ok(_) => return Err(Error::Format("trailing bytes after the data checksum".into())),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::Io(e)),
            }
        }
        let w = match header.tag {
            FORMAT_TAG_BLOCK_MAJOR => {
                Self::from_legacy(&BLOCK_MAJOR, "block-major tiles (format tag 1)", rows, cols, &offsets, &data)
            }
            FORMAT_TAG_ONE_SEGMENT => Self::from_legacy(
                &LANE_MAJOR_ONE_SEGMENT,
                "lane-major tiles of one segment (format tag 2)",
                rows,
                cols,
                &offsets,
                &data,
            ),
            _ => Self::from_parts(rows, cols, offsets, data),
        };
        w.map_err(|e| match e {
            Error::InvalidArgument(m) | Error::Shape(m) => Error::Format(format!("bitmap file: {m}")),
            other => other,
        })
    }
}
