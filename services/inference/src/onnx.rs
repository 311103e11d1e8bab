//! Writing small ONNX models in Rust: the protobuf messages of `onnx.proto` that a graph of
//! standard operators needs, and builders for the models the project makes itself (test and
//! benchmark models now; recalibrated decoders later).
//!
//! Field numbers follow `onnx.proto` (ONNX IR version 9, opset 17).

use prost::Message;

/// ONNX element types (`TensorProto.DataType`).
pub mod elem {
    pub const FLOAT: i32 = 1;
    pub const UINT8: i32 = 2;
    pub const INT8: i32 = 3;
    pub const INT32: i32 = 6;
    pub const INT64: i32 = 7;
    pub const BOOL: i32 = 9;
    pub const FLOAT16: i32 = 10;
    pub const DOUBLE: i32 = 11;
    pub const BFLOAT16: i32 = 16;
}

#[derive(Clone, PartialEq, Message)]
pub struct ModelProto {
    #[prost(int64, tag = "1")]
    pub ir_version: i64,
    #[prost(string, tag = "2")]
    pub producer_name: String,
    #[prost(string, tag = "3")]
    pub producer_version: String,
    #[prost(int64, tag = "5")]
    pub model_version: i64,
    #[prost(string, tag = "6")]
    pub doc_string: String,
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
    #[prost(message, repeated, tag = "8")]
    pub opset_import: Vec<OperatorSetIdProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct OperatorSetIdProto {
    #[prost(string, tag = "1")]
    pub domain: String,
    #[prost(int64, tag = "2")]
    pub version: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<TensorProto>,
    #[prost(message, repeated, tag = "11")]
    pub input: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "12")]
    pub output: Vec<ValueInfoProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct NodeProto {
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    #[prost(string, tag = "3")]
    pub name: String,
    #[prost(string, tag = "4")]
    pub op_type: String,
    #[prost(message, repeated, tag = "5")]
    pub attribute: Vec<AttributeProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct AttributeProto {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(float, tag = "2")]
    pub f: f32,
    #[prost(int64, tag = "3")]
    pub i: i64,
    #[prost(int64, repeated, tag = "8")]
    pub ints: Vec<i64>,
    /// FLOAT = 1, INT = 2, INTS = 7.
    #[prost(int32, tag = "20")]
    pub r#type: i32,
}

#[derive(Clone, PartialEq, Message)]
pub struct ValueInfoProto {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub r#type: Option<TypeProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TypeProto {
    #[prost(message, optional, tag = "1")]
    pub tensor_type: Option<TensorTypeProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TensorTypeProto {
    #[prost(int32, tag = "1")]
    pub elem_type: i32,
    #[prost(message, optional, tag = "2")]
    pub shape: Option<TensorShapeProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TensorShapeProto {
    #[prost(message, repeated, tag = "1")]
    pub dim: Vec<Dimension>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Dimension {
    #[prost(int64, optional, tag = "1")]
    pub dim_value: Option<i64>,
    #[prost(string, optional, tag = "2")]
    pub dim_param: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TensorProto {
    #[prost(int64, repeated, tag = "1")]
    pub dims: Vec<i64>,
    #[prost(int32, tag = "2")]
    pub data_type: i32,
    #[prost(float, repeated, tag = "4")]
    pub float_data: Vec<f32>,
    #[prost(string, tag = "8")]
    pub name: String,
}

/// A dimension: a size, or a named dimension of any size for `None`.
fn dim(d: Option<i64>, name: &str) -> Dimension {
    match d {
        Some(v) => Dimension {
            dim_value: Some(v),
            dim_param: None,
        },
        None => Dimension {
            dim_value: None,
            dim_param: Some(name.to_string()),
        },
    }
}

/// A graph input or output; `None` dimensions are named "batch".
pub fn value(name: &str, elem_type: i32, shape: &[Option<i64>]) -> ValueInfoProto {
    ValueInfoProto {
        name: name.to_string(),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto {
                elem_type,
                shape: Some(TensorShapeProto {
                    dim: shape.iter().map(|d| dim(*d, "batch")).collect(),
                }),
            }),
        }),
    }
}

pub fn node(op_type: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        name: format!("{op_type}_{}", outputs.first().copied().unwrap_or("")),
        op_type: op_type.to_string(),
        attribute: Vec::new(),
    }
}

pub fn int_attribute(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.to_string(),
        i,
        r#type: 2,
        ..Default::default()
    }
}

pub fn float_tensor(name: &str, dims: &[i64], values: Vec<f32>) -> TensorProto {
    TensorProto {
        dims: dims.to_vec(),
        data_type: elem::FLOAT,
        float_data: values,
        name: name.to_string(),
    }
}

/// A model of one graph, opset 17.
pub fn model(graph: GraphProto) -> Vec<u8> {
    ModelProto {
        ir_version: 9,
        producer_name: "gbrain".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        model_version: 1,
        doc_string: String::new(),
        graph: Some(graph),
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
    }
    .encode_to_vec()
}

/// `y = sigmoid(x)` with `x` float `[batch, features]`: the tiny model for batching.
pub fn batched_sigmoid(features: i64) -> Vec<u8> {
    model(GraphProto {
        node: vec![node("Sigmoid", &["x"], &["y"])],
        name: "batched_sigmoid".into(),
        initializer: Vec::new(),
        input: vec![value("x", elem::FLOAT, &[None, Some(features)])],
        output: vec![value("y", elem::FLOAT, &[None, Some(features)])],
    })
}

/// `y = cast(x)` from one element type to another, `[batch, features]`.
pub fn cast(from: i32, to: i32, features: i64) -> Vec<u8> {
    let mut cast = node("Cast", &["x"], &["y"]);
    cast.attribute.push(int_attribute("to", i64::from(to)));
    model(GraphProto {
        node: vec![cast],
        name: "cast".into(),
        initializer: Vec::new(),
        input: vec![value("x", from, &[None, Some(features)])],
        output: vec![value("y", to, &[None, Some(features)])],
    })
}

/// `p = softmax(x · w + b)` with `x` float `[batch, features]`: a linear decoder.
pub fn linear_softmax(weights: &[Vec<f32>], bias: &[f32]) -> Vec<u8> {
    let features = weights.len() as i64;
    let classes = bias.len() as i64;
    let w: Vec<f32> = weights.iter().flatten().copied().collect();
    let mut softmax = node("Softmax", &["logits"], &["p"]);
    softmax.attribute.push(int_attribute("axis", -1));
    model(GraphProto {
        node: vec![
            node("MatMul", &["x", "w"], &["xw"]),
            node("Add", &["xw", "b"], &["logits"]),
            softmax,
        ],
        name: "linear_softmax".into(),
        initializer: vec![
            float_tensor("w", &[features, classes], w),
            float_tensor("b", &[classes], bias.to_vec()),
        ],
        input: vec![value("x", elem::FLOAT, &[None, Some(features)])],
        output: vec![value("p", elem::FLOAT, &[None, Some(classes)])],
    })
}
