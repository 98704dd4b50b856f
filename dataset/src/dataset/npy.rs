//! `.npy` files: the checked, streaming reader and the streamed float16 row writer.
use super::*;

/// A numeric array read from a `.npy` file, converted to the type the caller needs.
#[derive(Debug)]
pub struct NpyArray<T> {
    /// The array's shape from the header (e.g. `[rows, dim]`).
    pub shape: Vec<usize>,
    /// The elements in C (row-major) order; their count is the product of `shape`.
    pub data: Vec<T>,
}

/// An open `.npy` file whose header is read and checked against the file's length (little-endian, C order):
/// its elements are then streamed, each converted once into the caller's type, so a multi-GB token file is
/// never held twice in memory.
pub(super) struct NpyStream {
    pub(super) descr: String,
    pub(super) shape: Vec<usize>,
    /// Byte offset of the first element (the header's length).
    pub(super) data_start: u64,
    /// The same open file, for positioned reads ([`DocStream`]).
    pub(super) raw: fs::File,
    pub(super) file: npyz::NpyFile<BufReader<fs::File>>,
}

impl NpyStream {
    pub(super) fn open(path: &Path) -> Result<NpyStream> {
        let f = fs::File::open(path).map_err(|e| DataError::io(path, e))?;
        let file_len = f.metadata().map_err(|e| DataError::io(path, e))?.len();
        let raw = f.try_clone().map_err(|e| DataError::io(path, e))?;
        let mut r = BufReader::new(f);
        let header = npyz::NpyHeader::from_reader(&mut r)
            .map_err(|e| ds_err(path, format!("not a readable .npy file: {e}")))?;
        let data_start = r.stream_position().map_err(|e| DataError::io(path, e))?;
        let file = npyz::NpyFile::with_header(header, r);
        if file.order() == npyz::Order::Fortran {
            return Err(ds_err(
                path,
                "Fortran-order arrays are not supported (save with C order)",
            ));
        }
        let descr = match file.dtype() {
            npyz::DType::Plain(t) => t.to_string(),
            d => return Err(ds_err(path, format!("unsupported dtype {}", d.descr()))),
        };
        let width: u64 = match descr.as_str() {
            "<f2" => 2,
            "<f4" | "<i4" => 4,
            "<i8" | "<f8" => 8,
            "|u1" | "|i1" => 1,
            d => {
                return Err(ds_err(
                    path,
                    format!("unsupported dtype {d:?} (little-endian f2/f4/f8/i4/i8 expected)"),
                ))
            }
        };
        let shape: Vec<usize> = file
            .shape()
            .iter()
            .map(|&d| usize::try_from(d))
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| ds_err(path, "shape does not fit in memory"))?;
        let need = file
            .shape()
            .iter()
            .try_fold(width, |acc, &d| acc.checked_mul(d));
        let have = file_len.saturating_sub(data_start);
        if need != Some(have) {
            return Err(ds_err(
                path,
                format!(
                    "data holds {have} bytes, shape {shape:?} of {descr} needs {}",
                    need.map_or("more than 2^64".into(), |n| n.to_string())
                ),
            ));
        }
        Ok(NpyStream {
            descr,
            shape,
            data_start,
            raw,
            file,
        })
    }

    /// Streams every element as `T` (the dtype is checked by `npyz`) converted by `conv` into `out`.
    pub(super) fn collect<T: npyz::Deserialize, U>(
        self,
        path: &Path,
        conv: impl Fn(T) -> U,
    ) -> Result<Vec<U>> {
        let n = self.file.len() as usize;
        let mut out = Vec::with_capacity(n);
        let data = self
            .file
            .data::<T>()
            .map_err(|e| ds_err(path, e.to_string()))?;
        for v in data {
            out.push(conv(v.map_err(|e| DataError::io(path, e))?));
        }
        Ok(out)
    }

    /// Bytes per element of a float array (f2, f4 or f8); an error naming the dtype otherwise.
    pub(super) fn float_width(&self, path: &Path) -> Result<usize> {
        match self.descr.as_str() {
            "<f2" => Ok(2),
            "<f4" => Ok(4),
            "<f8" => Ok(8),
            d => Err(ds_err(
                path,
                format!("expected a float array, found dtype {d:?}"),
            )),
        }
    }

    /// Streams every element of a float array (f2, f4 or f8) as f32.
    pub(super) fn into_f32(self, path: &Path) -> Result<Vec<f32>> {
        match self.float_width(path)? {
            2 => self.collect(path, |x: f16| x.to_f32()),
            4 => self.collect(path, |x: f32| x),
            _ => self.collect(path, |x: f64| x as f32),
        }
    }
}

/// Reads a float array (f2, f4 or f8) as f32.
pub fn read_npy_f32(path: &Path) -> Result<NpyArray<f32>> {
    let s = NpyStream::open(path)?;
    let shape = s.shape.clone();
    let data = s.into_f32(path)?;
    Ok(NpyArray { shape, data })
}

/// Reads an integer array (i4 or i8) as i64.
pub fn read_npy_i64(path: &Path) -> Result<NpyArray<i64>> {
    let s = NpyStream::open(path)?;
    let shape = s.shape.clone();
    let data = match s.descr.as_str() {
        "<i4" => s.collect(path, |x: i32| i64::from(x))?,
        "<i8" => s.collect(path, |x: i64| x)?,
        d => {
            return Err(ds_err(
                path,
                format!("expected an integer array, found dtype {d:?}"),
            ))
        }
    };
    Ok(NpyArray { shape, data })
}

/// The `.npy` version 1.0 header (magic, length, dict padded to a multiple of 64 bytes) of a C-order array.
pub(super) fn npy_header(descr: &str, shape: &[usize]) -> Vec<u8> {
    let shape_s = match shape {
        [n] => format!("({n},)"),
        s => format!(
            "({})",
            s.iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_s}, }}");
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out
}

/// Writes a `.npy` (version 1.0) file with dtype `descr` ("<f2", "<f4", "<i4", "<i8") from raw little-endian bytes.
pub fn write_npy(path: &Path, descr: &str, shape: &[usize], data: &[u8]) -> Result<()> {
    let (store, name) = LocalDir::for_file(path)?;
    put_npy(&store, &name, descr, shape, data)
}

/// [`write_npy`] through the storage seam (the file `name` of `store`, replaced atomically).
pub(crate) fn put_npy(
    store: &dyn Storage,
    name: &str,
    descr: &str,
    shape: &[usize],
    data: &[u8],
) -> Result<()> {
    let mut out = npy_header(descr, shape);
    out.extend_from_slice(data);
    Ok(store.put(name, &out, PutMode::Overwrite)?)
}

/// Streams a float16 `[rows, dim]` token matrix into a `.npy` file without holding it, through the storage
/// seam: the header (with the final shape, so `rows` must be known up front) goes first, then the rows as they
/// come; [`F16RowWriter::finish`] checks the row count and commits the file (fsync, then atomically in place).
/// Dropped before that, nothing is published.
pub(crate) struct F16RowWriter {
    at: PathBuf,
    out: Box<dyn FileWriter>,
    dim: usize,
    rows_left: usize,
    buf: Vec<f16>,
}

impl F16RowWriter {
    /// Starts the file `name` of `store` (replacing a file of that name when it is committed) and writes the
    /// header of a `[rows, dim]` f2 array.
    pub(crate) fn create(
        store: &dyn Storage,
        name: &str,
        rows: usize,
        dim: usize,
    ) -> Result<F16RowWriter> {
        let mut out = store.create(name, PutMode::Overwrite)?;
        let at = out.locate();
        out.write_all(&npy_header("<f2", &[rows, dim]))
            .map_err(|e| DataError::io(&at, e))?;
        Ok(F16RowWriter {
            at,
            out,
            dim,
            rows_left: rows,
            buf: Vec::new(),
        })
    }

    /// Appends the row-major rows `tokens` (a multiple of `dim` values), rounded to float16.
    pub(crate) fn write_rows(&mut self, tokens: &[f32]) -> Result<()> {
        let rows = tokens.len() / self.dim.max(1);
        if rows * self.dim != tokens.len() || rows > self.rows_left {
            return Err(ds_err(
                &self.at,
                format!(
                    "{} values do not make whole rows of {} within the {} rows left",
                    tokens.len(),
                    self.dim,
                    self.rows_left
                ),
            ));
        }
        for part in tokens.chunks(1 << 16) {
            self.buf.clear();
            self.buf.resize(part.len(), f16::ZERO);
            self.buf.convert_from_f32_slice(part);
            if cfg!(target_endian = "big") {
                self.buf
                    .iter_mut()
                    .for_each(|x| *x = f16::from_bits(x.to_bits().to_le()));
            }
            self.out
                .write_all(bytemuck::cast_slice(&self.buf))
                .map_err(|e| DataError::io(&self.at, e))?;
        }
        self.rows_left -= rows;
        Ok(())
    }

    /// Checks that every row announced by the header was written and commits the file.
    pub(crate) fn finish(self) -> Result<()> {
        if self.rows_left != 0 {
            return Err(ds_err(
                &self.at,
                format!(
                    "{} rows announced by the header were not written",
                    self.rows_left
                ),
            ));
        }
        Ok(self.out.commit()?)
    }
}
