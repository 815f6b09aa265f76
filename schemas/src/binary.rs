//! Avro binary straight between serde types and bytes, driven by a schema compiled once into
//! a [`Node`] tree: no intermediate `Value` tree, no name resolution per message, strings
//! borrowed from the input while they are read. Encoding follows the writer (current) schema
//! field by field; decoding follows the writer schema of the message and hands fields to the
//! Rust type by name, so a field an older writer lacks takes its `#[serde(default)]` and one
//! the Rust type does not know is skipped — the schema evolution the contract allows (fields
//! added with defaults, never renamed or reused).
//!
//! Everything read is bounded by the input: a count or a length beyond the bytes left, a
//! varint past ten bytes, a union branch that does not exist or invalid UTF-8 is an error,
//! never a panic, a hang or a large allocation.

use std::collections::HashMap;
use std::fmt;

use apache_avro::Schema;
use apache_avro::schema::{Name, UuidSchema};
use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};
use serde::ser::{self, Serialize};

/// A schema, compiled for encoding and decoding.
#[derive(Debug, Clone)]
pub enum Node {
    /// `null`
    Null,
    /// `boolean`
    Boolean,
    /// `int` (and logical types on it)
    Int,
    /// `long` (and logical types on it, timestamps included)
    Long,
    /// `float`
    Float,
    /// `double`
    Double,
    /// `string` (and `uuid` on it)
    String,
    /// `array` of the items' node.
    Array(Box<Node>),
    /// `map` of string keys to the values' node.
    Map(Box<Node>),
    /// `record`: its fields in schema order.
    Record(Vec<Field>),
    /// `union` of its branches, by index.
    Union(Vec<Node>),
}

/// One field of a record.
#[derive(Debug, Clone)]
pub struct Field {
    /// Its name.
    pub name: &'static str,
    /// Its schema.
    pub node: Node,
}

/// Why a value could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinaryError(pub String);

impl fmt::Display for BinaryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BinaryError {}

impl ser::Error for BinaryError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        BinaryError(msg.to_string())
    }
}

impl de::Error for BinaryError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        BinaryError(msg.to_string())
    }
}

fn fail<T>(msg: impl Into<String>) -> Result<T, BinaryError> {
    Err(BinaryError(msg.into()))
}

/// Compiles `schema`, resolving references through `names`.
pub fn compile(
    schema: &'static Schema,
    names: &HashMap<Name, &'static Schema>,
) -> Result<Node, String> {
    compile_depth(schema, names, 0)
}

fn compile_depth(
    schema: &'static Schema,
    names: &HashMap<Name, &'static Schema>,
    depth: usize,
) -> Result<Node, String> {
    if depth > 64 {
        return Err("schema nests deeper than 64 levels".into());
    }
    let next = |s: &'static Schema| compile_depth(s, names, depth + 1);
    Ok(match schema {
        Schema::Null => Node::Null,
        Schema::Boolean => Node::Boolean,
        Schema::Int | Schema::Date | Schema::TimeMillis => Node::Int,
        Schema::Long
        | Schema::TimeMicros
        | Schema::TimestampMillis
        | Schema::TimestampMicros
        | Schema::TimestampNanos
        | Schema::LocalTimestampMillis
        | Schema::LocalTimestampMicros
        | Schema::LocalTimestampNanos => Node::Long,
        Schema::Float => Node::Float,
        Schema::Double => Node::Double,
        Schema::String | Schema::Uuid(UuidSchema::String) => Node::String,
        Schema::Array(a) => Node::Array(Box::new(next(&a.items)?)),
        Schema::Map(m) => Node::Map(Box::new(next(&m.types)?)),
        Schema::Union(u) => Node::Union(u.variants().iter().map(next).collect::<Result<_, _>>()?),
        Schema::Record(r) => Node::Record(
            r.fields
                .iter()
                .map(|f| {
                    Ok(Field {
                        name: f.name.as_str(),
                        node: next(&f.schema)?,
                    })
                })
                .collect::<Result<_, String>>()?,
        ),
        Schema::Ref { name } => {
            let target = names
                .get(name)
                .ok_or_else(|| format!("unresolved reference to {name}"))?;
            next(target)?
        }
        other => return Err(format!("unsupported schema type {other:?}")),
    })
}

/// Appends the Avro binary of `value`, written with `node`, to `out`.
pub fn encode<T: Serialize + ?Sized>(
    node: &Node,
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), BinaryError> {
    value.serialize(Encoder { node, out })
}

/// Reads a `T` written with `node` from the front of `input`, which then holds what is left.
pub fn decode<'de, T: serde::Deserialize<'de>>(
    node: &Node,
    input: &mut &'de [u8],
) -> Result<T, BinaryError> {
    T::deserialize(Decoder { node, input })
}

fn put_long(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_long(out, bytes.len() as i64);
    out.extend_from_slice(bytes);
}

/// The branch of a union that carries a value (the first that is not `null`).
fn value_branch(branches: &[Node]) -> Result<(usize, &Node), BinaryError> {
    branches
        .iter()
        .enumerate()
        .find(|(_, b)| !matches!(b, Node::Null))
        .map_or_else(|| fail("a value for a union of only null"), Ok)
}

struct Encoder<'a> {
    node: &'a Node,
    out: &'a mut Vec<u8>,
}

impl<'a> Encoder<'a> {
    /// The node a value of this shape is written with: a union takes its value branch, whose
    /// index is written first.
    fn target(&mut self) -> Result<&'a Node, BinaryError> {
        match self.node {
            Node::Union(branches) => {
                let (i, b) = value_branch(branches)?;
                put_long(self.out, i as i64);
                Ok(b)
            }
            n => Ok(n),
        }
    }

    fn integer(mut self, v: i128) -> Result<(), BinaryError> {
        match self.target()? {
            Node::Long => match i64::try_from(v) {
                Ok(v) => put_long(self.out, v),
                Err(_) => return fail(format!("{v} does not fit a long")),
            },
            Node::Int => match i32::try_from(v) {
                Ok(v) => put_long(self.out, i64::from(v)),
                Err(_) => return fail(format!("{v} does not fit an int")),
            },
            Node::Double => self.out.extend_from_slice(&(v as f64).to_le_bytes()),
            n => return fail(format!("an integer for a {n:?}")),
        }
        Ok(())
    }
}

impl<'a> ser::Serializer for Encoder<'a> {
    type Ok = ();
    type Error = BinaryError;
    type SerializeSeq = Items<'a>;
    type SerializeTuple = ser::Impossible<(), BinaryError>;
    type SerializeTupleStruct = ser::Impossible<(), BinaryError>;
    type SerializeTupleVariant = ser::Impossible<(), BinaryError>;
    type SerializeMap = Items<'a>;
    type SerializeStruct = Fields<'a>;
    type SerializeStructVariant = ser::Impossible<(), BinaryError>;

    fn serialize_bool(mut self, v: bool) -> Result<(), BinaryError> {
        match self.target()? {
            Node::Boolean => {
                self.out.push(u8::from(v));
                Ok(())
            }
            n => fail(format!("a boolean for a {n:?}")),
        }
    }
    fn serialize_i8(self, v: i8) -> Result<(), BinaryError> {
        self.integer(i128::from(v))
    }
    fn serialize_i16(self, v: i16) -> Result<(), BinaryError> {
        self.integer(i128::from(v))
    }
    fn serialize_i32(self, v: i32) -> Result<(), BinaryError> {
        self.integer(i128::from(v))
    }
    fn serialize_i64(self, v: i64) -> Result<(), BinaryError> {
        self.integer(i128::from(v))
    }
    fn serialize_u8(self, v: u8) -> Result<(), BinaryError> {
        self.integer(i128::from(v))
    }
    fn serialize_u16(self, v: u16) -> Result<(), BinaryError> {
        self.integer(i128::from(v))
    }
    fn serialize_u32(self, v: u32) -> Result<(), BinaryError> {
        self.integer(i128::from(v))
    }
    fn serialize_u64(self, v: u64) -> Result<(), BinaryError> {
        self.integer(i128::from(v))
    }
    fn serialize_f32(self, v: f32) -> Result<(), BinaryError> {
        self.serialize_f64(f64::from(v))
    }
    fn serialize_f64(mut self, v: f64) -> Result<(), BinaryError> {
        match self.target()? {
            Node::Double => self.out.extend_from_slice(&v.to_le_bytes()),
            Node::Float => self.out.extend_from_slice(&(v as f32).to_le_bytes()),
            n => return fail(format!("a number for a {n:?}")),
        }
        Ok(())
    }
    fn serialize_char(self, v: char) -> Result<(), BinaryError> {
        self.serialize_str(v.encode_utf8(&mut [0u8; 4]))
    }
    fn serialize_str(mut self, v: &str) -> Result<(), BinaryError> {
        match self.target()? {
            Node::String => {
                put_bytes(self.out, v.as_bytes());
                Ok(())
            }
            n => fail(format!("a string for a {n:?}")),
        }
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<(), BinaryError> {
        fail("bytes are not used by the event schemas")
    }
    fn serialize_none(self) -> Result<(), BinaryError> {
        match self.node {
            Node::Null => Ok(()),
            Node::Union(branches) => match branches.iter().position(|b| matches!(b, Node::Null)) {
                Some(i) => {
                    put_long(self.out, i as i64);
                    Ok(())
                }
                None => fail("no value for a union without null"),
            },
            n => fail(format!("no value for a {n:?}")),
        }
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), BinaryError> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), BinaryError> {
        self.serialize_none()
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), BinaryError> {
        self.serialize_none()
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<(), BinaryError> {
        self.serialize_str(variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), BinaryError> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<(), BinaryError> {
        fail("enum variants with data are not used by the event schemas")
    }
    fn serialize_seq(mut self, len: Option<usize>) -> Result<Items<'a>, BinaryError> {
        let Some(len) = len else {
            return fail("a sequence of unknown length");
        };
        match self.target()? {
            Node::Array(item) => Items::start(self.out, item, len),
            n => fail(format!("a sequence for a {n:?}")),
        }
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, BinaryError> {
        fail("tuples are not used by the event schemas")
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, BinaryError> {
        fail("tuple structs are not used by the event schemas")
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, BinaryError> {
        fail("tuple variants are not used by the event schemas")
    }
    fn serialize_map(mut self, len: Option<usize>) -> Result<Items<'a>, BinaryError> {
        let Some(len) = len else {
            return fail("a map of unknown length");
        };
        match self.target()? {
            Node::Map(value) => Items::start(self.out, value, len),
            n => fail(format!("a map for a {n:?}")),
        }
    }
    fn serialize_struct(mut self, name: &'static str, _: usize) -> Result<Fields<'a>, BinaryError> {
        match self.target()? {
            Node::Record(fields) => Ok(Fields {
                fields,
                next: 0,
                out: self.out,
            }),
            n => fail(format!("the struct {name} for a {n:?}")),
        }
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, BinaryError> {
        fail("struct variants are not used by the event schemas")
    }
}

/// The items of an array, or the entries of a map, in one block.
struct Items<'a> {
    node: &'a Node,
    out: &'a mut Vec<u8>,
    left: usize,
}

impl<'a> Items<'a> {
    fn start(out: &'a mut Vec<u8>, node: &'a Node, len: usize) -> Result<Items<'a>, BinaryError> {
        if len > 0 {
            put_long(out, len as i64);
        }
        Ok(Items {
            node,
            out,
            left: len,
        })
    }

    fn item<T: Serialize + ?Sized>(&mut self, node: &Node, value: &T) -> Result<(), BinaryError> {
        value.serialize(Encoder {
            node,
            out: self.out,
        })
    }

    fn finish(self) -> Result<(), BinaryError> {
        if self.left != 0 {
            return fail("a sequence shorter than its announced length");
        }
        self.out.push(0);
        Ok(())
    }

    fn count(&mut self) -> Result<(), BinaryError> {
        match self.left.checked_sub(1) {
            Some(left) => {
                self.left = left;
                Ok(())
            }
            None => fail("a sequence longer than its announced length"),
        }
    }
}

impl ser::SerializeSeq for Items<'_> {
    type Ok = ();
    type Error = BinaryError;

    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), BinaryError> {
        self.count()?;
        let node = self.node;
        self.item(node, value)
    }

    fn end(self) -> Result<(), BinaryError> {
        self.finish()
    }
}

impl ser::SerializeMap for Items<'_> {
    type Ok = ();
    type Error = BinaryError;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), BinaryError> {
        self.count()?;
        self.item(&Node::String, key)
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), BinaryError> {
        let node = self.node;
        self.item(node, value)
    }

    fn end(self) -> Result<(), BinaryError> {
        self.finish()
    }
}

/// The fields of a record, which must come in schema order.
struct Fields<'a> {
    fields: &'a [Field],
    next: usize,
    out: &'a mut Vec<u8>,
}

impl ser::SerializeStruct for Fields<'_> {
    type Ok = ();
    type Error = BinaryError;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), BinaryError> {
        let Some(field) = self.fields.get(self.next) else {
            return fail(format!("field {key} is not in the schema"));
        };
        if field.name != key {
            return fail(format!(
                "field {key} comes where the schema has {}",
                field.name
            ));
        }
        self.next += 1;
        value.serialize(Encoder {
            node: &field.node,
            out: self.out,
        })
    }

    fn end(self) -> Result<(), BinaryError> {
        match self.fields.get(self.next) {
            Some(missing) => fail(format!("field {} was not written", missing.name)),
            None => Ok(()),
        }
    }
}

/// Reads from the front of the input.
struct Reader;

impl Reader {
    fn byte(input: &mut &[u8]) -> Result<u8, BinaryError> {
        let (&b, rest) = input.split_first().ok_or_else(truncated)?;
        *input = rest;
        Ok(b)
    }

    fn long(input: &mut &[u8]) -> Result<i64, BinaryError> {
        let mut z: u64 = 0;
        for shift in (0..70).step_by(7) {
            let b = Reader::byte(input)?;
            if shift == 63 && b > 1 {
                return fail("a varint overflows a long");
            }
            z |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(((z >> 1) as i64) ^ -((z & 1) as i64));
            }
        }
        fail("a varint longer than ten bytes")
    }

    fn take<'de>(input: &mut &'de [u8], n: usize) -> Result<&'de [u8], BinaryError> {
        if n > input.len() {
            return Err(truncated());
        }
        let (head, rest) = input.split_at(n);
        *input = rest;
        Ok(head)
    }

    /// A length or count, which cannot exceed what is left to read.
    fn length(input: &mut &[u8]) -> Result<usize, BinaryError> {
        let n = Reader::long(input)?;
        match usize::try_from(n) {
            Ok(n) if n <= input.len() => Ok(n),
            _ => fail(format!("a length of {n} with {} bytes left", input.len())),
        }
    }

    fn str<'de>(input: &mut &'de [u8]) -> Result<&'de str, BinaryError> {
        let n = Reader::length(input)?;
        std::str::from_utf8(Reader::take(input, n)?)
            .map_err(|_| BinaryError("a string that is not UTF-8".into()))
    }

    /// The count of the next block of an array or map (0 at the end).
    fn block(input: &mut &[u8]) -> Result<usize, BinaryError> {
        let n = Reader::long(input)?;
        let count = if n < 0 {
            // A negative count is followed by the block's size in bytes.
            Reader::long(input)?;
            n.checked_neg()
                .ok_or_else(|| BinaryError("a block count overflows".into()))?
        } else {
            n
        };
        match usize::try_from(count) {
            Ok(c) if c <= input.len() => Ok(c),
            _ => fail(format!(
                "a block of {count} items with {} bytes left",
                input.len()
            )),
        }
    }

    fn skip(node: &Node, input: &mut &[u8], depth: usize) -> Result<(), BinaryError> {
        if depth > 64 {
            return fail("a value nests deeper than 64 levels");
        }
        match node {
            Node::Null => {}
            Node::Boolean => {
                Reader::byte(input)?;
            }
            Node::Int | Node::Long => {
                Reader::long(input)?;
            }
            Node::Float => {
                Reader::take(input, 4)?;
            }
            Node::Double => {
                Reader::take(input, 8)?;
            }
            Node::String => {
                let n = Reader::length(input)?;
                Reader::take(input, n)?;
            }
            Node::Array(item) => loop {
                let count = Reader::block(input)?;
                if count == 0 {
                    break;
                }
                for _ in 0..count {
                    Reader::skip(item, input, depth + 1)?;
                }
            },
            Node::Map(value) => loop {
                let count = Reader::block(input)?;
                if count == 0 {
                    break;
                }
                for _ in 0..count {
                    Reader::skip(&Node::String, input, depth + 1)?;
                    Reader::skip(value, input, depth + 1)?;
                }
            },
            Node::Record(fields) => {
                for f in fields {
                    Reader::skip(&f.node, input, depth + 1)?;
                }
            }
            Node::Union(branches) => {
                let branch = union_branch(branches, input)?;
                Reader::skip(branch, input, depth + 1)?;
            }
        }
        Ok(())
    }
}

fn truncated() -> BinaryError {
    BinaryError("the body ends early".into())
}

fn union_branch<'n>(branches: &'n [Node], input: &mut &[u8]) -> Result<&'n Node, BinaryError> {
    let i = Reader::long(input)?;
    usize::try_from(i)
        .ok()
        .and_then(|i| branches.get(i))
        .ok_or_else(|| BinaryError(format!("union branch {i} does not exist")))
}

struct Decoder<'a, 'de> {
    node: &'a Node,
    input: &'a mut &'de [u8],
}

impl<'de> de::Deserializer<'de> for Decoder<'_, 'de> {
    type Error = BinaryError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, BinaryError> {
        let input = self.input;
        match self.node {
            Node::Null => visitor.visit_unit(),
            Node::Boolean => match Reader::byte(input)? {
                0 => visitor.visit_bool(false),
                1 => visitor.visit_bool(true),
                b => fail(format!("{b} is not a boolean")),
            },
            Node::Int => {
                let v = Reader::long(input)?;
                let v = i32::try_from(v).map_err(|_| BinaryError(format!("{v} is not an int")))?;
                visitor.visit_i32(v)
            }
            Node::Long => visitor.visit_i64(Reader::long(input)?),
            Node::Float => {
                let b = Reader::take(input, 4)?;
                visitor.visit_f32(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            Node::Double => {
                let b = Reader::take(input, 8)?;
                let mut bytes = [0u8; 8];
                bytes.copy_from_slice(b);
                visitor.visit_f64(f64::from_le_bytes(bytes))
            }
            Node::String => visitor.visit_borrowed_str(Reader::str(input)?),
            Node::Array(item) => visitor.visit_seq(Blocks {
                node: item,
                input,
                left: 0,
                done: false,
            }),
            Node::Map(value) => visitor.visit_map(Blocks {
                node: value,
                input,
                left: 0,
                done: false,
            }),
            Node::Record(fields) => visitor.visit_map(RecordFields {
                fields: fields.iter(),
                value: None,
                input,
            }),
            Node::Union(branches) => {
                let branch = union_branch(branches, input)?;
                Decoder {
                    node: branch,
                    input,
                }
                .deserialize_any(visitor)
            }
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, BinaryError> {
        match self.node {
            Node::Null => visitor.visit_none(),
            Node::Union(branches) => {
                let branch = union_branch(branches, self.input)?;
                if matches!(branch, Node::Null) {
                    visitor.visit_none()
                } else {
                    visitor.visit_some(Decoder {
                        node: branch,
                        input: self.input,
                    })
                }
            }
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, BinaryError> {
        Reader::skip(self.node, self.input, 0)?;
        visitor.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, BinaryError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, BinaryError> {
        match self.node {
            Node::String => visitor.visit_enum(Reader::str(self.input)?.into_deserializer()),
            n => fail(format!("an enum for a {n:?}")),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct seq tuple tuple_struct map struct identifier
    }
}

/// The items of an array or the entries of a map, block by block.
struct Blocks<'a, 'de> {
    node: &'a Node,
    input: &'a mut &'de [u8],
    left: usize,
    done: bool,
}

impl Blocks<'_, '_> {
    /// Whether another item follows, reading the next block's count when one ended.
    fn more(&mut self) -> Result<bool, BinaryError> {
        if self.done {
            return Ok(false);
        }
        if self.left == 0 {
            self.left = Reader::block(self.input)?;
            if self.left == 0 {
                self.done = true;
                return Ok(false);
            }
        }
        self.left -= 1;
        Ok(true)
    }
}

impl<'de> de::SeqAccess<'de> for Blocks<'_, 'de> {
    type Error = BinaryError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, BinaryError> {
        if !self.more()? {
            return Ok(None);
        }
        seed.deserialize(Decoder {
            node: self.node,
            input: self.input,
        })
        .map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.left)
    }
}

impl<'de> de::MapAccess<'de> for Blocks<'_, 'de> {
    type Error = BinaryError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, BinaryError> {
        if !self.more()? {
            return Ok(None);
        }
        seed.deserialize(Decoder {
            node: &Node::String,
            input: self.input,
        })
        .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, BinaryError> {
        seed.deserialize(Decoder {
            node: self.node,
            input: self.input,
        })
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.left)
    }
}

/// A record's fields in the writer's order, each offered to the Rust type by name.
struct RecordFields<'a, 'de> {
    fields: std::slice::Iter<'a, Field>,
    value: Option<&'a Node>,
    input: &'a mut &'de [u8],
}

impl<'de> de::MapAccess<'de> for RecordFields<'_, 'de> {
    type Error = BinaryError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, BinaryError> {
        let Some(field) = self.fields.next() else {
            return Ok(None);
        };
        self.value = Some(&field.node);
        let name: de::value::BorrowedStrDeserializer<'de, BinaryError> =
            de::value::BorrowedStrDeserializer::new(field.name);
        seed.deserialize(name).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, BinaryError> {
        let Some(node) = self.value.take() else {
            return fail("a record value without its field");
        };
        seed.deserialize(Decoder {
            node,
            input: self.input,
        })
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.fields.len())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Inner {
        a: i64,
        b: String,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Outer {
        n: i32,
        long: i64,
        flag: bool,
        x: f64,
        s: Option<String>,
        none: Option<i64>,
        items: Vec<String>,
        scores: BTreeMap<String, f64>,
        inner: Option<Inner>,
    }

    const SCHEMA: &str = r#"{"type":"record","name":"Outer","fields":[
        {"name":"n","type":"int"},{"name":"long","type":"long"},{"name":"flag","type":"boolean"},
        {"name":"x","type":"double"},{"name":"s","type":["null","string"]},
        {"name":"none","type":["null","long"]},{"name":"items","type":{"type":"array","items":"string"}},
        {"name":"scores","type":{"type":"map","values":"double"}},
        {"name":"inner","type":["null",{"type":"record","name":"Inner","fields":[
            {"name":"a","type":"long"},{"name":"b","type":"string"}]}]}]}"#;

    fn schema() -> &'static Schema {
        Box::leak(Box::new(Schema::parse_str(SCHEMA).unwrap()))
    }

    fn sample() -> Outer {
        Outer {
            n: -7,
            long: i64::MIN,
            flag: true,
            x: 0.25,
            s: Some("héllo".into()),
            none: None,
            items: vec!["a".into(), String::new(), "c".into()],
            scores: BTreeMap::from([("fast".into(), 1.5), ("slow".into(), -2.0)]),
            inner: Some(Inner {
                a: 1 << 40,
                b: "in".into(),
            }),
        }
    }

    #[test]
    fn bytes_equal_the_reference_implementation_and_read_back() {
        let schema = schema();
        let node = compile(schema, &HashMap::new()).unwrap();
        let mut ours = Vec::new();
        encode(&node, &sample(), &mut ours).unwrap();
        // The reference writes the map in another order: each side reads the other's bytes.
        let mut reference = Vec::new();
        apache_avro::writer::datum::GenericDatumWriter::builder(schema)
            .build()
            .unwrap()
            .write_value(&mut reference, apache_avro::to_value(sample()).unwrap())
            .unwrap();
        assert_eq!(ours.len(), reference.len());
        let mut input = &reference[..];
        let back: Outer = decode(&node, &mut input).unwrap();
        assert_eq!(back, sample());
        assert!(input.is_empty());
        let value = apache_avro::reader::datum::GenericDatumReader::builder(schema)
            .build()
            .unwrap()
            .read_value(&mut &ours[..])
            .unwrap();
        assert_eq!(apache_avro::from_value::<Outer>(&value).unwrap(), sample());
    }

    #[test]
    fn bad_input_is_an_error_never_a_panic() {
        let node = compile(schema(), &HashMap::new()).unwrap();
        let mut good = Vec::new();
        encode(&node, &sample(), &mut good).unwrap();
        for cut in 0..good.len() {
            let mut input = &good[..cut];
            assert!(decode::<Outer>(&node, &mut input).is_err(), "cut at {cut}");
        }
        // A length far beyond the input, a varint that never ends, a union branch past the end.
        for bad in [
            &[0x0e, 0xff, 0xff, 0xff, 0xff, 0x0f][..],
            &[0x80; 20][..],
            &[0x0e, 0x02, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0x08][..],
        ] {
            let mut input = bad;
            assert!(decode::<Outer>(&node, &mut input).is_err());
        }
    }

    #[test]
    fn fields_the_reader_lacks_are_skipped_and_those_it_adds_take_their_default() {
        #[derive(Debug, PartialEq, Deserialize)]
        struct Newer {
            n: i32,
            #[serde(default)]
            added: Option<String>,
        }
        let node = compile(schema(), &HashMap::new()).unwrap();
        let mut bytes = Vec::new();
        encode(&node, &sample(), &mut bytes).unwrap();
        let mut input = &bytes[..];
        let newer: Newer = decode(&node, &mut input).unwrap();
        assert_eq!(newer, Newer { n: -7, added: None });
        assert!(input.is_empty(), "skipped fields are consumed");
    }

    #[test]
    fn fields_out_of_schema_order_are_refused() {
        #[derive(Serialize)]
        struct Swapped {
            long: i64,
            n: i32,
        }
        let schema: &'static Schema = Box::leak(Box::new(
            Schema::parse_str(r#"{"type":"record","name":"S","fields":[{"name":"n","type":"int"},{"name":"long","type":"long"}]}"#)
                .unwrap(),
        ));
        let node = compile(schema, &HashMap::new()).unwrap();
        let err = encode(&node, &Swapped { long: 1, n: 2 }, &mut Vec::new()).unwrap_err();
        assert!(err.0.contains("schema has n"), "{err}");
    }
}
