//! Objects as the wire sees them: mutations, stat results and typed fields with their query filters
//! (the NAOSD model: a typed object's fields are indexed and queried on the device itself).

use crate::ids::Oid;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// A typed field value. Values of different kinds never compare equal or ordered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Value {
    I64(i64),
    Str(String),
    /// Microseconds since the Unix epoch.
    Time(i64),
    Bytes(#[serde(with = "serde_bytes")] Vec<u8>),
}

impl Value {
    /// The one-byte tag of the kind, first byte of the index encoding.
    pub fn tag(&self) -> u8 {
        match self {
            Value::I64(_) => 1,
            Value::Str(_) => 2,
            Value::Time(_) => 3,
            Value::Bytes(_) => 4,
        }
    }

    /// Compare two values of the same kind; `None` when kinds differ.
    pub fn cmp_same_kind(&self, other: &Value) -> Option<std::cmp::Ordering> {
        match (self, other) {
            (Value::I64(a), Value::I64(b)) => Some(a.cmp(b)),
            (Value::Str(a), Value::Str(b)) => Some(a.cmp(b)),
            (Value::Time(a), Value::Time(b)) => Some(a.cmp(b)),
            (Value::Bytes(a), Value::Bytes(b)) => Some(a.cmp(b)),
            _ => None,
        }
    }

    /// Order-preserving encoding: `tag`, then for integers the big-endian bytes with the sign bit
    /// flipped, for strings and bytes the raw bytes with 0x00 escaped as 0x00 0xFF and a 0x00 0x00
    /// terminator. Comparing encodings bytewise gives the same order as comparing values, and an
    /// encoding is never a prefix of another, so it can be followed by an object id in an index key.
    pub fn encode_ordered(&self, out: &mut Vec<u8>) {
        out.push(self.tag());
        match self {
            Value::I64(v) | Value::Time(v) => {
                out.extend_from_slice(&((*v as u64) ^ (1u64 << 63)).to_be_bytes())
            }
            Value::Str(s) => escape_bytes(s.as_bytes(), out),
            Value::Bytes(b) => escape_bytes(b, out),
        }
    }

    pub fn kind_name(&self) -> &'static str {
        match self {
            Value::I64(_) => "i64",
            Value::Str(_) => "string",
            Value::Time(_) => "timestamp",
            Value::Bytes(_) => "bytes",
        }
    }
}

fn escape_bytes(b: &[u8], out: &mut Vec<u8>) {
    for &c in b {
        out.push(c);
        if c == 0 {
            out.push(0xFF);
        }
    }
    out.extend_from_slice(&[0, 0]);
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::I64(v) => write!(f, "{v}"),
            Value::Str(s) => write!(f, "{s:?}"),
            Value::Time(t) => write!(f, "@{t}"),
            Value::Bytes(b) => {
                write!(f, "0x")?;
                for c in b {
                    write!(f, "{c:02x}")?;
                }
                Ok(())
            }
        }
    }
}

/// A comparison in a query predicate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CmpOp {
    Eq,
    Lt,
    Le,
    Gt,
    Ge,
    /// String or bytes prefix.
    Prefix,
}

/// `field op value`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pred {
    pub field: String,
    pub op: CmpOp,
    pub value: Value,
}

/// A conjunction of predicates (`AND`). An empty filter matches every object of the type.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Filter {
    pub preds: Vec<Pred>,
}

/// Why a filter is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("empty predicate in filter")]
    Empty,
    #[error("predicate {0:?} is not of the form `field op value`")]
    Shape(String),
    #[error("unknown operator {0:?} (use =, <, <=, >, >=, prefix)")]
    Operator(String),
    #[error("bad value {0:?}: use 123, \"text\", @<micros since epoch>, or 0x<hex>")]
    BadValue(String),
    #[error("prefix needs a string or bytes value, got {0}")]
    PrefixKind(&'static str),
    #[error("bad field name {0:?}: names are non-empty and have no NUL")]
    FieldName(String),
}

impl Pred {
    /// Does the value satisfy this predicate? Values of another kind never do.
    pub fn matches(&self, v: &Value) -> bool {
        use std::cmp::Ordering::{Equal, Greater, Less};
        let ord =
            |want: fn(std::cmp::Ordering) -> bool| v.cmp_same_kind(&self.value).is_some_and(want);
        match self.op {
            CmpOp::Prefix => match (v, &self.value) {
                (Value::Str(a), Value::Str(p)) => a.starts_with(p.as_str()),
                (Value::Bytes(a), Value::Bytes(p)) => a.starts_with(p),
                _ => false,
            },
            CmpOp::Eq => ord(|o| o == Equal),
            CmpOp::Lt => ord(|o| o == Less),
            CmpOp::Le => ord(|o| o != Greater),
            CmpOp::Gt => ord(|o| o == Greater),
            CmpOp::Ge => ord(|o| o != Less),
        }
    }
}

impl Filter {
    /// Does an object with these fields match every predicate?
    pub fn matches(&self, fields: &BTreeMap<String, Value>) -> bool {
        self.preds
            .iter()
            .all(|p| fields.get(&p.field).is_some_and(|v| p.matches(v)))
    }

    /// Check the filter is well formed (field names, prefix kinds).
    pub fn validate(&self) -> Result<(), FilterError> {
        for p in &self.preds {
            check_field_name(&p.field)?;
            if p.op == CmpOp::Prefix && !matches!(p.value, Value::Str(_) | Value::Bytes(_)) {
                return Err(FilterError::PrefixKind(p.value.kind_name()));
            }
        }
        Ok(())
    }

    /// Parse `field op value [AND field op value ...]`. Values: `123` or `-5` (i64), `"text"` or
    /// `'text'` (string), `@1700000000000000` (timestamp, µs), `0xdeadbeef` (bytes).
    pub fn parse(s: &str) -> Result<Filter, FilterError> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(Filter::default());
        }
        let mut preds = Vec::new();
        for part in split_and(s) {
            preds.push(parse_pred(part.trim())?);
        }
        let f = Filter { preds };
        f.validate()?;
        Ok(f)
    }
}

/// Field and type names are non-empty, at most 255 bytes, and contain no NUL (the index uses NUL as a
/// separator).
pub fn check_field_name(name: &str) -> Result<(), FilterError> {
    if name.is_empty() || name.len() > 255 || name.contains('\0') {
        return Err(FilterError::FieldName(name.to_string()));
    }
    Ok(())
}

/// Split on the word AND (any case) outside quotes.
fn split_and(s: &str) -> Vec<&str> {
    let bytes = s.as_bytes();
    let mut parts = Vec::new();
    let mut start = 0;
    let mut quote: Option<u8> = None;
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == b'"' || c == b'\'' => quote = Some(c),
            None => {
                let at_word = (i == 0 || bytes[i - 1].is_ascii_whitespace())
                    && i + 3 <= bytes.len()
                    && bytes[i..i + 3].eq_ignore_ascii_case(b"and")
                    && (i + 3 == bytes.len() || bytes[i + 3].is_ascii_whitespace());
                if at_word {
                    parts.push(&s[start..i]);
                    start = i + 3;
                    i += 3;
                    continue;
                }
            }
        }
        i += 1;
    }
    parts.push(&s[start..]);
    parts
}

fn parse_pred(s: &str) -> Result<Pred, FilterError> {
    if s.is_empty() {
        return Err(FilterError::Empty);
    }
    let field_end = s
        .find(|c: char| c.is_whitespace() || "=<>".contains(c))
        .ok_or_else(|| FilterError::Shape(s.to_string()))?;
    let field = s[..field_end].to_string();
    let rest = s[field_end..].trim_start();
    let (op, rest) = if let Some(r) = rest.strip_prefix("<=") {
        (CmpOp::Le, r)
    } else if let Some(r) = rest.strip_prefix(">=") {
        (CmpOp::Ge, r)
    } else if let Some(r) = rest.strip_prefix("==") {
        (CmpOp::Eq, r)
    } else if let Some(r) = rest.strip_prefix('=') {
        (CmpOp::Eq, r)
    } else if let Some(r) = rest.strip_prefix('<') {
        (CmpOp::Lt, r)
    } else if let Some(r) = rest.strip_prefix('>') {
        (CmpOp::Gt, r)
    } else if rest.len() >= 6 && rest[..6].eq_ignore_ascii_case("prefix") {
        (CmpOp::Prefix, &rest[6..])
    } else {
        let word = rest.split_whitespace().next().unwrap_or("");
        return Err(FilterError::Operator(word.to_string()));
    };
    let value = parse_value(rest.trim())?;
    check_field_name(&field)?;
    Ok(Pred { field, op, value })
}

/// Parse one literal value (see [`Filter::parse`]).
pub fn parse_value(v: &str) -> Result<Value, FilterError> {
    let bad = || FilterError::BadValue(v.to_string());
    if v.len() >= 2
        && ((v.starts_with('"') && v.ends_with('"')) || (v.starts_with('\'') && v.ends_with('\'')))
    {
        return Ok(Value::Str(v[1..v.len() - 1].to_string()));
    }
    if let Some(t) = v.strip_prefix('@') {
        return t.parse().map(Value::Time).map_err(|_| bad());
    }
    if let Some(h) = v.strip_prefix("0x") {
        if h.len() % 2 != 0 {
            return Err(bad());
        }
        let mut out = Vec::with_capacity(h.len() / 2);
        for i in (0..h.len()).step_by(2) {
            out.push(u8::from_str_radix(&h[i..i + 2], 16).map_err(|_| bad())?);
        }
        return Ok(Value::Bytes(out));
    }
    v.parse().map(Value::I64).map_err(|_| bad())
}

/// A mutation of one object. Every variant is a blind write (its effect does not depend on the
/// bytes it replaces), so replaying a journal suffix over a newer state converges to the same state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ObjOp {
    /// Replace the whole object's data (creating it): size becomes `data.len()`.
    WriteFull {
        #[serde(with = "crate::payload")]
        data: Bytes,
    },
    /// Write `data` at `offset`, creating the object and extending it as needed (holes read as zeros).
    Write {
        offset: u64,
        #[serde(with = "crate::payload")]
        data: Bytes,
    },
    /// Set the size, dropping or zero-extending data.
    Truncate { size: u64 },
    /// Remove the object with its attributes and fields.
    Delete,
    /// Set and remove attributes (creating the object if needed).
    SetAttrs {
        set: BTreeMap<String, Bytes>,
        remove: Vec<String>,
    },
    /// Make the object a typed object of `otype` with these fields (replacing earlier fields).
    SetTyped {
        otype: String,
        fields: BTreeMap<String, Value>,
    },
}

impl ObjOp {
    /// Bytes of payload carried (for throttling and accounting).
    pub fn payload_len(&self) -> usize {
        match self {
            ObjOp::WriteFull { data } | ObjOp::Write { data, .. } => data.len(),
            _ => 0,
        }
    }

    /// Whether applying this op needs the object's prior state (partial writes and attribute edits
    /// do; full replaces and deletes do not).
    pub fn needs_prior(&self) -> bool {
        !matches!(self, ObjOp::WriteFull { .. } | ObjOp::Delete)
    }
}

/// What `stat` returns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct ObjectStat {
    pub oid: Oid,
    pub size: u64,
    /// Placement-group version of the last change.
    pub version: u64,
    /// Microseconds since the epoch of the last change.
    pub mtime: i64,
    pub attrs: BTreeMap<String, Bytes>,
    pub otype: Option<String>,
    pub fields: BTreeMap<String, Value>,
}

/// One query match: the object and its fields.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QueryHit {
    pub oid: Oid,
    pub fields: BTreeMap<String, Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_filters() {
        let f = Filter::parse("age >= 30 AND name prefix 'bo' and t<@100 AND k = 0x00ff").unwrap();
        assert_eq!(f.preds.len(), 4);
        assert_eq!(f.preds[0].op, CmpOp::Ge);
        assert_eq!(f.preds[0].value, Value::I64(30));
        assert_eq!(f.preds[1].op, CmpOp::Prefix);
        assert_eq!(f.preds[1].value, Value::Str("bo".into()));
        assert_eq!(f.preds[2].value, Value::Time(100));
        assert_eq!(f.preds[3].value, Value::Bytes(vec![0, 255]));
        let f = Filter::parse("city = \"sand and sea\"").unwrap();
        assert_eq!(f.preds.len(), 1);
        assert_eq!(f.preds[0].value, Value::Str("sand and sea".into()));
    }

    #[test]
    fn rejects_bad_filters() {
        assert!(matches!(
            Filter::parse("age ~ 3"),
            Err(FilterError::Operator(_))
        ));
        assert!(matches!(
            Filter::parse("age = x"),
            Err(FilterError::BadValue(_))
        ));
        assert!(matches!(
            Filter::parse("age prefix 3"),
            Err(FilterError::PrefixKind(_))
        ));
        assert!(matches!(
            Filter::parse("age = 1 AND"),
            Err(FilterError::Empty)
        ));
        assert!(matches!(
            Filter::parse("justaword"),
            Err(FilterError::Shape(_))
        ));
    }

    #[test]
    fn ordered_encoding_matches_value_order() {
        use rand::Rng;
        let mut rng = rand::thread_rng();
        for _ in 0..2000 {
            let (a, b) = if rng.gen_bool(0.5) {
                (Value::I64(rng.gen()), Value::I64(rng.gen_range(-5..5)))
            } else {
                let mk = |rng: &mut rand::rngs::ThreadRng| {
                    let n = rng.gen_range(0..4);
                    (0..n).map(|_| rng.gen_range(0u8..3)).collect::<Vec<u8>>()
                };
                (Value::Bytes(mk(&mut rng)), Value::Bytes(mk(&mut rng)))
            };
            let (mut ea, mut eb) = (Vec::new(), Vec::new());
            a.encode_ordered(&mut ea);
            b.encode_ordered(&mut eb);
            assert_eq!(ea.cmp(&eb), a.cmp_same_kind(&b).unwrap(), "{a:?} vs {b:?}");
            if a != b {
                assert!(!ea.starts_with(&eb) && !eb.starts_with(&ea));
            }
        }
    }

    #[test]
    fn predicates_match_only_same_kind() {
        let p = Pred {
            field: "a".into(),
            op: CmpOp::Lt,
            value: Value::I64(5),
        };
        assert!(p.matches(&Value::I64(4)));
        assert!(!p.matches(&Value::I64(5)));
        assert!(!p.matches(&Value::Time(4)));
        let p = Pred {
            field: "a".into(),
            op: CmpOp::Prefix,
            value: Value::Str("ab".into()),
        };
        assert!(p.matches(&Value::Str("abc".into())));
        assert!(!p.matches(&Value::Str("a".into())));
    }
}
