//! Tensors between KServe v2 messages and ONNX Runtime.
//!
//! Inside the node a tensor is its datatype, shape and row-major little-endian bytes: what
//! `raw_input_contents` carries, what dynamic batching concatenates and splits, and what typed
//! contents are converted to and from.

use bytes::Bytes;
use gbrain_proto::inference::InferTensorContents;
use ort::value::{DynValue, TensorElementType};

use crate::error::{Error, Result};

/// The KServe v2 datatypes the node serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    Bool,
    U8,
    U16,
    U32,
    U64,
    I8,
    I16,
    I32,
    I64,
    F16,
    Bf16,
    F32,
    F64,
}

impl DType {
    pub const ALL: [DType; 13] = [
        Self::Bool,
        Self::U8,
        Self::U16,
        Self::U32,
        Self::U64,
        Self::I8,
        Self::I16,
        Self::I32,
        Self::I64,
        Self::F16,
        Self::Bf16,
        Self::F32,
        Self::F64,
    ];

    /// The name KServe v2 gives it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Bool => "BOOL",
            Self::U8 => "UINT8",
            Self::U16 => "UINT16",
            Self::U32 => "UINT32",
            Self::U64 => "UINT64",
            Self::I8 => "INT8",
            Self::I16 => "INT16",
            Self::I32 => "INT32",
            Self::I64 => "INT64",
            Self::F16 => "FP16",
            Self::Bf16 => "BF16",
            Self::F32 => "FP32",
            Self::F64 => "FP64",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.name() == name)
    }

    /// Whether KServe's typed contents can carry it (FP16 and BF16 travel only raw).
    pub fn has_typed_contents(self) -> bool {
        !matches!(self, Self::F16 | Self::Bf16)
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Self::Bool | Self::U8 | Self::I8 => 1,
            Self::U16 | Self::I16 | Self::F16 | Self::Bf16 => 2,
            Self::U32 | Self::I32 | Self::F32 => 4,
            Self::U64 | Self::I64 | Self::F64 => 8,
        }
    }

    pub fn from_ort(t: TensorElementType) -> Option<Self> {
        Some(match t {
            TensorElementType::Bool => Self::Bool,
            TensorElementType::Uint8 => Self::U8,
            TensorElementType::Uint16 => Self::U16,
            TensorElementType::Uint32 => Self::U32,
            TensorElementType::Uint64 => Self::U64,
            TensorElementType::Int8 => Self::I8,
            TensorElementType::Int16 => Self::I16,
            TensorElementType::Int32 => Self::I32,
            TensorElementType::Int64 => Self::I64,
            TensorElementType::Float16 => Self::F16,
            TensorElementType::Bfloat16 => Self::Bf16,
            TensorElementType::Float32 => Self::F32,
            TensorElementType::Float64 => Self::F64,
            _ => return None,
        })
    }
}

/// A tensor: datatype, shape and row-major little-endian bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<i64>,
    pub data: Bytes,
}

/// Elements in a tensor of `shape`, or why the shape is not one.
pub fn element_count(shape: &[i64], field: &str) -> Result<usize> {
    shape.iter().try_fold(1usize, |n, &d| {
        let d = usize::try_from(d)
            .map_err(|_| Error::invalid(field, format!("dimension {d} is negative")))?;
        n.checked_mul(d)
            .ok_or_else(|| Error::invalid(field, format!("shape {shape:?} is too large")))
    })
}

/// Fixed-size little-endian element types.
trait Le: Sized + Copy {
    const SIZE: usize;
    fn read(b: &[u8]) -> Self;
    fn write(self, out: &mut Vec<u8>);
}

macro_rules! le {
    ($($t:ty),*) => {$(
        impl Le for $t {
            const SIZE: usize = std::mem::size_of::<$t>();
            fn read(b: &[u8]) -> Self {
                let mut a = [0u8; std::mem::size_of::<$t>()];
                a.copy_from_slice(b);
                <$t>::from_le_bytes(a)
            }
            fn write(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
    )*};
}

le!(
    u8,
    u16,
    u32,
    u64,
    i8,
    i16,
    i32,
    i64,
    f32,
    f64,
    half::f16,
    half::bf16
);

impl Le for bool {
    const SIZE: usize = 1;
    fn read(b: &[u8]) -> Self {
        b[0] != 0
    }
    fn write(self, out: &mut Vec<u8>) {
        out.push(u8::from(self));
    }
}

fn decode<T: Le>(b: &[u8]) -> Vec<T> {
    b.chunks_exact(T::SIZE).map(T::read).collect()
}

fn encode<T: Le>(v: &[T]) -> Bytes {
    let mut out = Vec::with_capacity(v.len() * T::SIZE);
    for x in v {
        x.write(&mut out);
    }
    Bytes::from(out)
}

/// `values` narrowed to `T`, or the first that does not fit.
fn narrow<S: Copy + std::fmt::Display, T: TryFrom<S> + Le>(
    values: &[S],
    field: &str,
    dtype: DType,
) -> Result<Bytes> {
    let mut out = Vec::with_capacity(values.len() * T::SIZE);
    for (i, &v) in values.iter().enumerate() {
        T::try_from(v)
            .map_err(|_| {
                Error::invalid(
                    field,
                    format!("element {i} ({v}) does not fit {}", dtype.name()),
                )
            })?
            .write(&mut out);
    }
    Ok(Bytes::from(out))
}

impl Tensor {
    /// A request's input from its raw bytes, checked against its datatype and shape.
    pub fn from_raw(name: &str, datatype: &str, shape: &[i64], raw: Bytes) -> Result<Self> {
        let field = format!("raw_input_contents[{name}]");
        let dtype = parse_dtype(name, datatype)?;
        let n = element_count(shape, &format!("inputs[{name}].shape"))?;
        let want = n
            .checked_mul(dtype.size())
            .ok_or_else(|| Error::invalid(&field, "too large"))?;
        if raw.len() != want {
            return Err(Error::invalid(
                field,
                format!(
                    "{} bytes do not hold a {} tensor of shape {shape:?} ({want} bytes)",
                    raw.len(),
                    dtype.name()
                ),
            ));
        }
        Ok(Self {
            name: name.to_string(),
            dtype,
            shape: shape.to_vec(),
            data: raw,
        })
    }

    /// A request's input from typed contents.
    pub fn from_contents(
        name: &str,
        datatype: &str,
        shape: &[i64],
        c: &InferTensorContents,
    ) -> Result<Self> {
        let field = format!("inputs[{name}].contents");
        let dtype = parse_dtype(name, datatype)?;
        let n = element_count(shape, &format!("inputs[{name}].shape"))?;
        let (len, data) = match dtype {
            DType::Bool => (c.bool_contents.len(), encode(&c.bool_contents)),
            DType::I8 => (
                c.int_contents.len(),
                narrow::<i32, i8>(&c.int_contents, &field, dtype)?,
            ),
            DType::I16 => (
                c.int_contents.len(),
                narrow::<i32, i16>(&c.int_contents, &field, dtype)?,
            ),
            DType::I32 => (c.int_contents.len(), encode(&c.int_contents)),
            DType::I64 => (c.int64_contents.len(), encode(&c.int64_contents)),
            DType::U8 => (
                c.uint_contents.len(),
                narrow::<u32, u8>(&c.uint_contents, &field, dtype)?,
            ),
            DType::U16 => (
                c.uint_contents.len(),
                narrow::<u32, u16>(&c.uint_contents, &field, dtype)?,
            ),
            DType::U32 => (c.uint_contents.len(), encode(&c.uint_contents)),
            DType::U64 => (c.uint64_contents.len(), encode(&c.uint64_contents)),
            DType::F32 => (c.fp32_contents.len(), encode(&c.fp32_contents)),
            DType::F64 => (c.fp64_contents.len(), encode(&c.fp64_contents)),
            DType::F16 | DType::Bf16 => {
                return Err(Error::invalid(
                    field,
                    format!(
                        "{} has no typed contents: send it in raw_input_contents",
                        dtype.name()
                    ),
                ));
            }
        };
        if len != n {
            return Err(Error::invalid(
                field,
                format!("{len} values do not fill shape {shape:?} ({n} elements)"),
            ));
        }
        Ok(Self {
            name: name.to_string(),
            dtype,
            shape: shape.to_vec(),
            data,
        })
    }

    /// The tensor as typed contents; None for FP16 and BF16, which travel only raw.
    pub fn to_contents(&self) -> Option<InferTensorContents> {
        let mut c = InferTensorContents::default();
        let b = &self.data[..];
        match self.dtype {
            DType::Bool => c.bool_contents = decode(b),
            DType::I8 => c.int_contents = decode::<i8>(b).into_iter().map(i32::from).collect(),
            DType::I16 => c.int_contents = decode::<i16>(b).into_iter().map(i32::from).collect(),
            DType::I32 => c.int_contents = decode(b),
            DType::I64 => c.int64_contents = decode(b),
            DType::U8 => c.uint_contents = decode::<u8>(b).into_iter().map(u32::from).collect(),
            DType::U16 => c.uint_contents = decode::<u16>(b).into_iter().map(u32::from).collect(),
            DType::U32 => c.uint_contents = decode(b),
            DType::U64 => c.uint64_contents = decode(b),
            DType::F32 => c.fp32_contents = decode(b),
            DType::F64 => c.fp64_contents = decode(b),
            DType::F16 | DType::Bf16 => return None,
        }
        Some(c)
    }

    /// The tensor as an ONNX Runtime value.
    pub fn to_ort(&self) -> Result<DynValue> {
        fn make<T: Le + ort::value::PrimitiveTensorElementType + std::fmt::Debug + 'static>(
            t: &Tensor,
        ) -> Result<DynValue> {
            let v: Vec<T> = decode(&t.data);
            Ok(ort::value::Tensor::from_array((t.shape.clone(), v))?.into_dyn())
        }
        match self.dtype {
            DType::Bool => make::<bool>(self),
            DType::U8 => make::<u8>(self),
            DType::U16 => make::<u16>(self),
            DType::U32 => make::<u32>(self),
            DType::U64 => make::<u64>(self),
            DType::I8 => make::<i8>(self),
            DType::I16 => make::<i16>(self),
            DType::I32 => make::<i32>(self),
            DType::I64 => make::<i64>(self),
            DType::F16 => make::<half::f16>(self),
            DType::Bf16 => make::<half::bf16>(self),
            DType::F32 => make::<f32>(self),
            DType::F64 => make::<f64>(self),
        }
    }

    /// An ONNX Runtime output as a tensor.
    pub fn from_ort(name: &str, value: &DynValue) -> Result<Self> {
        fn take<T: Le + ort::value::PrimitiveTensorElementType + std::fmt::Debug + 'static>(
            name: &str,
            dtype: DType,
            value: &DynValue,
        ) -> Result<Tensor> {
            let (shape, data) = value.try_extract_tensor::<T>()?;
            Ok(Tensor {
                name: name.to_string(),
                dtype,
                shape: shape.to_vec(),
                data: encode(data),
            })
        }
        let dtype = value
            .dtype()
            .tensor_type()
            .and_then(DType::from_ort)
            .ok_or_else(|| {
                Error::Internal(format!(
                    "output {name} is {}, not a served tensor",
                    value.dtype()
                ))
            })?;
        match dtype {
            DType::Bool => take::<bool>(name, dtype, value),
            DType::U8 => take::<u8>(name, dtype, value),
            DType::U16 => take::<u16>(name, dtype, value),
            DType::U32 => take::<u32>(name, dtype, value),
            DType::U64 => take::<u64>(name, dtype, value),
            DType::I8 => take::<i8>(name, dtype, value),
            DType::I16 => take::<i16>(name, dtype, value),
            DType::I32 => take::<i32>(name, dtype, value),
            DType::I64 => take::<i64>(name, dtype, value),
            DType::F16 => take::<half::f16>(name, dtype, value),
            DType::Bf16 => take::<half::bf16>(name, dtype, value),
            DType::F32 => take::<f32>(name, dtype, value),
            DType::F64 => take::<f64>(name, dtype, value),
        }
    }

    /// Rows (the first dimension); 1 for a scalar.
    pub fn rows(&self) -> usize {
        self.shape
            .first()
            .map_or(1, |&d| usize::try_from(d).unwrap_or(0))
    }
}

fn parse_dtype(name: &str, datatype: &str) -> Result<DType> {
    DType::from_name(datatype).ok_or_else(|| {
        let known: Vec<&str> = DType::ALL.iter().map(|d| d.name()).collect();
        Error::invalid(
            format!("inputs[{name}].datatype"),
            format!("'{datatype}' is not one of {}", known.join(", ")),
        )
    })
}

/// Joins tensors of the same datatype and trailing dimensions along the first dimension.
pub fn concat(name: &str, parts: &[&Tensor]) -> Result<Tensor> {
    let first = parts
        .first()
        .ok_or_else(|| Error::Internal("concatenating no tensors".into()))?;
    let rows: i64 = parts
        .iter()
        .map(|t| t.shape.first().copied().unwrap_or(1))
        .sum();
    let mut shape = first.shape.clone();
    if let Some(d) = shape.first_mut() {
        *d = rows;
    }
    let mut data = Vec::with_capacity(parts.iter().map(|t| t.data.len()).sum());
    for t in parts {
        data.extend_from_slice(&t.data);
    }
    Ok(Tensor {
        name: name.to_string(),
        dtype: first.dtype,
        shape,
        data: Bytes::from(data),
    })
}

/// Splits a tensor along its first dimension into pieces of `rows` rows each.
pub fn split(t: &Tensor, rows: &[usize]) -> Result<Vec<Tensor>> {
    let total: usize = rows.iter().sum();
    if t.shape.is_empty() || t.rows() != total {
        return Err(Error::Internal(format!(
            "output {} has shape {:?}, not {total} rows to split",
            t.name, t.shape
        )));
    }
    let row_bytes = t.data.len().checked_div(total).unwrap_or(0);
    let mut at = 0;
    let mut out = Vec::with_capacity(rows.len());
    for &r in rows {
        let mut shape = t.shape.clone();
        shape[0] = r as i64;
        out.push(Tensor {
            name: t.name.clone(),
            dtype: t.dtype,
            shape,
            data: t.data.slice(at..at + r * row_bytes),
        });
        at += r * row_bytes;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_and_raw_agree() {
        let c = InferTensorContents {
            fp32_contents: vec![1.0, -2.5, 3.25, 0.0, 7.0, 8.5],
            ..Default::default()
        };
        let typed = Tensor::from_contents("x", "FP32", &[2, 3], &c).unwrap();
        let raw_bytes: Vec<u8> = c
            .fp32_contents
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let raw = Tensor::from_raw("x", "FP32", &[2, 3], Bytes::from(raw_bytes)).unwrap();
        assert_eq!(typed, raw);
        assert_eq!(typed.to_contents().unwrap().fp32_contents, c.fp32_contents);
    }

    #[test]
    fn narrow_types_round_trip_and_overflow_is_refused() {
        let c = InferTensorContents {
            int_contents: vec![-128, 0, 127],
            ..Default::default()
        };
        let t = Tensor::from_contents("x", "INT8", &[3], &c).unwrap();
        assert_eq!(t.data.len(), 3);
        assert_eq!(t.to_contents().unwrap().int_contents, c.int_contents);
        let bad = InferTensorContents {
            int_contents: vec![1, 300],
            ..Default::default()
        };
        let e = Tensor::from_contents("x", "INT8", &[2], &bad)
            .unwrap_err()
            .to_string();
        assert!(e.contains("element 1 (300)"), "{e}");
    }

    #[test]
    fn mismatches_name_the_field_and_reason() {
        let e = Tensor::from_raw("x", "FP32", &[2, 2], Bytes::from(vec![0u8; 12]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("raw_input_contents[x]") && e.contains("16 bytes"),
            "{e}"
        );
        let e = Tensor::from_raw("x", "FP8", &[1], Bytes::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("inputs[x].datatype"), "{e}");
        let e = Tensor::from_raw("x", "FP32", &[-1], Bytes::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("negative"), "{e}");
        let c = InferTensorContents {
            fp32_contents: vec![1.0],
            ..Default::default()
        };
        let e = Tensor::from_contents("x", "FP32", &[2], &c)
            .unwrap_err()
            .to_string();
        assert!(e.contains("1 values do not fill"), "{e}");
        let e = Tensor::from_contents("x", "FP16", &[1], &c)
            .unwrap_err()
            .to_string();
        assert!(e.contains("raw_input_contents"), "{e}");
        let e = Tensor::from_raw("x", "FP32", &[i64::MAX, i64::MAX], Bytes::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("too large"), "{e}");
    }

    #[test]
    fn concat_then_split_gives_the_parts_back() {
        let a = Tensor::from_raw("x", "INT16", &[1, 2], Bytes::from(vec![1, 0, 2, 0])).unwrap();
        let b = Tensor::from_raw(
            "x",
            "INT16",
            &[2, 2],
            Bytes::from(vec![3, 0, 4, 0, 5, 0, 6, 0]),
        )
        .unwrap();
        let joined = concat("x", &[&a, &b]).unwrap();
        assert_eq!(joined.shape, vec![3, 2]);
        let parts = split(&joined, &[1, 2]).unwrap();
        assert_eq!(parts, vec![a, b]);
        assert!(split(&joined, &[1, 1]).is_err());
    }
}
