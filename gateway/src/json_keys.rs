//! Duplicate member names anywhere in a JSON document.
//!
//! JSON parsers disagree on `{"max_tokens": 1, "max_tokens": 1000000}`: Lumina's view takes
//! one member and many upstreams' parsers the other, so what Lumina meters would not be what
//! the upstream runs. Every inbound body is checked once, before it is read, and a duplicate is
//! refused with the path of the second occurrence (`max_tokens`, `messages[2].content`).
//! Names are compared after unescaping, so `"max\u005ftokens"` duplicates `"max_tokens"`.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// Objects with at most this many members are checked by a linear scan, larger ones by a set.
const LINEAR_SCAN: usize = 16;

/// One step of the path to the duplicate, collected innermost first as the walk unwinds.
enum Step {
    Member(String),
    Index(usize),
}

/// The first duplicate member found: its path, as OpenAI names parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuplicateKey {
    /// `max_tokens`, `messages[0].content`, `tools[1].function.name`.
    pub path: String,
}

/// The outcome of a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyCheck {
    /// No object holds a name twice.
    Unique,
    /// This member repeats a name of its object.
    Duplicate(DuplicateKey),
    /// The bytes are not one JSON value (the caller's own parse reports why).
    NotJson,
}

/// Checks every object of the JSON document in `bytes` for repeated member names.
pub fn check(bytes: &[u8]) -> KeyCheck {
    let found = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let walked = Walk { found: &found }
        .deserialize(&mut de)
        .and_then(|()| de.end());
    match (walked, found.into_inner()) {
        (_, Some(steps)) => KeyCheck::Duplicate(DuplicateKey {
            path: render(&steps),
        }),
        (Ok(()), None) => KeyCheck::Unique,
        (Err(_), None) => KeyCheck::NotJson,
    }
}

/// `steps` (innermost first) as `a.b[2].c`.
fn render(steps: &[Step]) -> String {
    let mut out = String::new();
    for step in steps.iter().rev() {
        match step {
            Step::Member(name) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(name);
            }
            Step::Index(i) => {
                out.push('[');
                out.push_str(&i.to_string());
                out.push(']');
            }
        }
    }
    out
}

/// Walks one value. Nothing is recorded on the way down; a duplicate's path is collected
/// while the error unwinds, so a document without duplicates costs one pass and no allocation
/// beyond the names of large objects.
#[derive(Clone, Copy)]
struct Walk<'s> {
    found: &'s RefCell<Option<Vec<Step>>>,
}

impl Walk<'_> {
    /// Adds `step` to the path of a duplicate found below it.
    fn unwinding(&self, step: impl FnOnce() -> Step) {
        if let Some(steps) = self.found.borrow_mut().as_mut() {
            steps.push(step());
        }
    }
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

/// A member name, borrowed unless it holds escapes.
struct Name<'de>(Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Name<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Name<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(V)
    }
}

/// The names of one object seen so far.
enum Seen<'de> {
    Few(Vec<Cow<'de, str>>),
    Many(HashSet<Cow<'de, str>>),
}

impl<'de> Seen<'de> {
    /// Adds `name`; false when the object had it already.
    fn insert(&mut self, name: Cow<'de, str>) -> bool {
        match self {
            Seen::Few(names) if names.contains(&name) => false,
            Seen::Few(names) if names.len() < LINEAR_SCAN => {
                names.push(name);
                true
            }
            Seen::Few(names) => {
                let mut set: HashSet<Cow<'de, str>> = names.drain(..).collect();
                set.insert(name);
                *self = Seen::Many(set);
                true
            }
            Seen::Many(set) => set.insert(name),
        }
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0;
        loop {
            match seq.next_element_seed(self) {
                Ok(Some(())) => index += 1,
                Ok(None) => return Ok(()),
                Err(e) => {
                    self.unwinding(|| Step::Index(index));
                    return Err(e);
                }
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = Seen::Few(Vec::new());
        while let Some(Name(name)) = map.next_key::<Name<'de>>()? {
            if !seen.insert(name.clone()) {
                *self.found.borrow_mut() = Some(vec![Step::Member(name.into_owned())]);
                return Err(de::Error::custom("duplicate member"));
            }
            if let Err(e) = map.next_value_seed(self) {
                self.unwinding(|| Step::Member(name.into_owned()));
                return Err(e);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dup(text: &str) -> Option<String> {
        match check(text.as_bytes()) {
            KeyCheck::Duplicate(d) => Some(d.path),
            _ => None,
        }
    }

    #[test]
    fn duplicates_are_found_at_any_depth_with_their_path() {
        assert_eq!(dup(r#"{"a":1,"b":2}"#), None);
        assert_eq!(
            dup(r#"{"max_tokens":1,"max_tokens":1000000}"#).as_deref(),
            Some("max_tokens")
        );
        assert_eq!(
            dup(r#"{"messages":[{"role":"user"},{"role":"user","content":"a","content":"b"}]}"#)
                .as_deref(),
            Some("messages[1].content")
        );
        assert_eq!(
            dup(r#"{"stream_options":{"include_usage":false,"include_usage":true}}"#).as_deref(),
            Some("stream_options.include_usage")
        );
        assert_eq!(
            dup(r#"[{"x":[{"y":1,"y":2}]}]"#).as_deref(),
            Some("[0].x[0].y")
        );
    }

    #[test]
    fn names_are_compared_unescaped_and_large_objects_use_a_set() {
        assert_eq!(
            dup(r#"{"max_tokens":1,"max\u005ftokens":2}"#).as_deref(),
            Some("max_tokens")
        );
        let mut big = String::from("{");
        for i in 0..100 {
            big.push_str(&format!("\"k{i}\":{i},"));
        }
        big.push_str("\"k7\":0}");
        assert_eq!(dup(&big).as_deref(), Some("k7"));
        assert_eq!(check(br#"{"a":{"a":{"a":1}}}"#), KeyCheck::Unique);
    }

    #[test]
    fn bad_json_is_left_to_the_parser() {
        assert_eq!(check(b"{\"a\":"), KeyCheck::NotJson);
        assert_eq!(check(b"{} x"), KeyCheck::NotJson);
        assert_eq!(check(b"\"just a string\""), KeyCheck::Unique);
    }
}
