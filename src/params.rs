//! Free-form `params` maps of handlers, sources and the repository, typed
//! just enough for YAML (strings, numbers, booleans, lists, maps), and
//! their typed readers: [`file`](mod@file), [`pipe`] and [`restic`] each read and
//! check one kind's parameters, once, for `config check` and for a run
//! (a leaf module: the configuration, the handlers and the repository all
//! use it, and it uses none of them).

pub mod file;
pub mod pipe;
pub mod restic;

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

/// Parse a size: bytes (`1048576`) or with a unit (`512MiB`, `10 GB`).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let size: bytesize::ByteSize = text.trim().parse().map_err(|e| {
        format!("{text:?} is not a size ({e}): write e.g. 500MiB, 20GiB or a number of bytes")
    })?;
    if size.as_u64() == 0 {
        return Err(format!("{text:?}: a size must be more than 0"));
    }
    Ok(size.as_u64())
}

/// A `params` map: merged from handler and source, read by handlers and the
/// repository through the typed getters below.
#[derive(Clone, Default, PartialEq, Deserialize)]
#[serde(transparent)]
pub struct Params(pub BTreeMap<String, ParamValue>);

/// One parameter value.
///
/// Deserialized by hand rather than with `#[serde(untagged)]`: untagged
/// enums buffer the input and infer map keys' types, so a nested key such
/// as `n:` or `on:` became a boolean under YAML 1.1 rules and the whole map
/// failed with "data did not match any variant". Here map keys are always
/// read as strings, and errors keep their exact location.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamValue {
    /// `true` / `false`.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A floating point number.
    Float(f64),
    /// A string.
    Str(String),
    /// A list.
    List(Vec<ParamValue>),
    /// A nested map.
    Map(BTreeMap<String, ParamValue>),
}

impl<'de> Deserialize<'de> for ParamValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ParamValueVisitor)
    }
}

/// Builds a [`ParamValue`] from whatever the format holds.
struct ParamValueVisitor;

impl<'de> Visitor<'de> for ParamValueVisitor {
    type Value = ParamValue;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a boolean, number, string, list or map (quote an empty value: '')")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<ParamValue, E> {
        Ok(ParamValue::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<ParamValue, E> {
        Ok(ParamValue::Int(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<ParamValue, E> {
        i64::try_from(v)
            .map(ParamValue::Int)
            .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &"an integer below 2^63"))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<ParamValue, E> {
        Ok(ParamValue::Float(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<ParamValue, E> {
        Ok(ParamValue::Str(v.to_string()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<ParamValue, E> {
        Ok(ParamValue::Str(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ParamValue, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<ParamValue>()? {
            items.push(item);
        }
        Ok(ParamValue::List(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ParamValue, A::Error> {
        let mut out = BTreeMap::new();
        while let Some((k, v)) = map.next_entry::<String, ParamValue>()? {
            out.insert(k, v);
        }
        Ok(ParamValue::Map(out))
    }
}

impl ParamValue {
    /// The value as a string, if it is a scalar.
    pub fn as_string(&self) -> Option<String> {
        match self {
            ParamValue::Str(s) => Some(s.clone()),
            ParamValue::Int(i) => Some(i.to_string()),
            ParamValue::Float(f) => Some(f.to_string()),
            ParamValue::Bool(b) => Some(b.to_string()),
            ParamValue::List(_) | ParamValue::Map(_) => None,
        }
    }

    /// A short name of the value's kind, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            ParamValue::Bool(_) => "a boolean",
            ParamValue::Int(_) => "an integer",
            ParamValue::Float(_) => "a number",
            ParamValue::Str(_) => "a string",
            ParamValue::List(_) => "a list",
            ParamValue::Map(_) => "a map",
        }
    }
}

/// A parameter had the wrong type.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("parameter '{key}' must be {expected}, not {found}")]
pub struct ParamTypeError {
    /// The parameter's name.
    pub key: String,
    /// What it should have been.
    pub expected: &'static str,
    /// What it was.
    pub found: &'static str,
}

/// Whether a parameter may hold a secret (its value is never shown).
pub fn is_sensitive_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["password", "secret", "token", "key", "env", "credential"]
        .iter()
        .any(|w| k.contains(w))
}

/// Shows every key but hides the values of keys that may hold secrets
/// (`password`, `env`, `*_token`, ...), so a `{:?}` of a configuration never
/// leaks them.
impl std::fmt::Debug for Params {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut m = f.debug_map();
        for (k, v) in &self.0 {
            if is_sensitive_key(k) {
                m.entry(k, &"<redacted>");
            } else {
                m.entry(k, v);
            }
        }
        m.finish()
    }
}

impl Params {
    /// `self` with `over`'s entries replacing ours (the source wins over the
    /// handler).
    pub fn merged_with(&self, over: &Params) -> Params {
        let mut m = self.0.clone();
        m.extend(over.0.iter().map(|(k, v)| (k.clone(), v.clone())));
        Params(m)
    }

    /// Whether the key is present.
    pub fn contains(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }

    fn type_error(&self, key: &str, expected: &'static str) -> ParamTypeError {
        ParamTypeError {
            key: key.to_string(),
            expected,
            found: self.0.get(key).map(ParamValue::kind).unwrap_or("missing"),
        }
    }

    /// A string parameter (numbers and booleans are converted); `Ok(None)`
    /// when absent.
    pub fn get_str(&self, key: &str) -> Result<Option<String>, ParamTypeError> {
        match self.0.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_string()
                .map(Some)
                .ok_or_else(|| self.type_error(key, "a string")),
        }
    }

    /// A boolean parameter (`true`/`false`, also as strings).
    pub fn get_bool(&self, key: &str) -> Result<Option<bool>, ParamTypeError> {
        match self.0.get(key) {
            None => Ok(None),
            Some(ParamValue::Bool(b)) => Ok(Some(*b)),
            Some(ParamValue::Str(s)) if s == "true" || s == "false" => Ok(Some(s == "true")),
            Some(_) => Err(self.type_error(key, "a boolean")),
        }
    }

    /// An integer parameter (also as a string of digits).
    pub fn get_int(&self, key: &str) -> Result<Option<i64>, ParamTypeError> {
        match self.0.get(key) {
            None => Ok(None),
            Some(ParamValue::Int(i)) => Ok(Some(*i)),
            Some(ParamValue::Str(s)) => s
                .parse()
                .map(Some)
                .map_err(|_| self.type_error(key, "an integer")),
            Some(_) => Err(self.type_error(key, "an integer")),
        }
    }

    /// A duration parameter written like `30s`, `10m` or `1h 30m`.
    pub fn get_duration(&self, key: &str) -> Result<Option<std::time::Duration>, ParamTypeError> {
        match self.0.get(key) {
            None => Ok(None),
            Some(ParamValue::Str(s)) => humantime::parse_duration(s.trim())
                .map(Some)
                .map_err(|_| self.type_error(key, "a duration like 30s or 10m")),
            Some(_) => Err(self.type_error(key, "a duration like 30s or 10m")),
        }
    }

    /// A list of strings (a single string is a list of one).
    pub fn get_str_list(&self, key: &str) -> Result<Vec<String>, ParamTypeError> {
        match self.0.get(key) {
            None => Ok(Vec::new()),
            Some(ParamValue::List(items)) => items
                .iter()
                .map(|v| {
                    v.as_string()
                        .ok_or_else(|| self.type_error(key, "a list of strings"))
                })
                .collect(),
            Some(v) => v
                .as_string()
                .map(|s| vec![s])
                .ok_or_else(|| self.type_error(key, "a list of strings")),
        }
    }

    /// A map of strings (e.g. environment variables).
    pub fn get_str_map(&self, key: &str) -> Result<BTreeMap<String, String>, ParamTypeError> {
        match self.0.get(key) {
            None => Ok(BTreeMap::new()),
            Some(ParamValue::Map(m)) => m
                .iter()
                .map(|(k, v)| {
                    v.as_string()
                        .map(|s| (k.clone(), s))
                        .ok_or_else(|| self.type_error(key, "a map of strings"))
                })
                .collect(),
            Some(_) => Err(self.type_error(key, "a map of strings")),
        }
    }
}

#[cfg(test)]
impl Params {
    /// A map of these pairs (tests).
    pub(crate) fn from_pairs(pairs: &[(&str, ParamValue)]) -> Params {
        Params(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, ParamValue)]) -> Params {
        Params::from_pairs(pairs)
    }

    #[test]
    fn debug_hides_secret_values() {
        let m = p(&[
            ("password", ParamValue::Str("hunter2".into())),
            (
                "env",
                ParamValue::Map(
                    [(
                        "AWS_SECRET_ACCESS_KEY".to_string(),
                        ParamValue::Str("s3cr3t".into()),
                    )]
                    .into(),
                ),
            ),
            ("uri", ParamValue::Str("/srv/repo".into())),
        ]);
        let d = format!("{m:?}");
        assert!(!d.contains("hunter2") && !d.contains("s3cr3t"), "{d}");
        assert!(d.contains("/srv/repo") && d.contains("password"), "{d}");
    }

    #[test]
    fn source_params_win_over_handler_params() {
        let h = p(&[
            ("path", ParamValue::Str("/h".into())),
            ("x", ParamValue::Int(1)),
        ]);
        let s = p(&[("path", ParamValue::Str("/s".into()))]);
        let m = h.merged_with(&s);
        assert_eq!(m.get_str("path").unwrap().as_deref(), Some("/s"));
        assert_eq!(m.get_int("x").unwrap(), Some(1));
    }

    #[test]
    fn typed_getters_report_the_key_and_kind() {
        let m = p(&[
            ("env", ParamValue::Str("x".into())),
            ("n", ParamValue::Bool(true)),
        ]);
        let e = m.get_str_map("env").unwrap_err();
        assert_eq!(
            e.to_string(),
            "parameter 'env' must be a map of strings, not a string"
        );
        assert!(m.get_int("n").is_err());
        assert_eq!(m.get_bool("n").unwrap(), Some(true));
        assert_eq!(m.get_str("missing").unwrap(), None);
        let d = p(&[
            ("w", ParamValue::Str("1m 30s".into())),
            ("bad", ParamValue::Str("soon".into())),
        ]);
        assert_eq!(
            d.get_duration("w").unwrap(),
            Some(std::time::Duration::from_secs(90))
        );
        assert!(
            d.get_duration("bad")
                .unwrap_err()
                .to_string()
                .contains("duration")
        );
        assert_eq!(d.get_duration("missing").unwrap(), None);
        assert_eq!(m.get_str_list("env").unwrap(), vec!["x".to_string()]);
    }

    #[test]
    fn yaml_values_of_every_kind_deserialize() {
        let yaml = "b: true\ni: -3\nf: 1.5\ns: hello\nq: '12'\nl: [1, a, {k: v}]\nm: {n: {y: 1}, on: off}\n";
        let m: Params = serde_saphyr::from_str(yaml).unwrap();
        assert_eq!(m.0["b"], ParamValue::Bool(true));
        assert_eq!(m.0["i"], ParamValue::Int(-3));
        assert_eq!(m.0["f"], ParamValue::Float(1.5));
        assert_eq!(m.0["s"], ParamValue::Str("hello".into()));
        assert_eq!(m.0["q"], ParamValue::Str("12".into()));
        assert_eq!(
            m.0["l"],
            ParamValue::List(vec![
                ParamValue::Int(1),
                ParamValue::Str("a".into()),
                ParamValue::Map([("k".to_string(), ParamValue::Str("v".into()))].into()),
            ])
        );
        // Nested keys that look like YAML 1.1 booleans stay strings (with
        // `#[serde(untagged)]` this map failed to deserialize).
        let ParamValue::Map(inner) = &m.0["m"] else {
            panic!("map expected")
        };
        assert_eq!(
            inner["n"],
            ParamValue::Map([("y".to_string(), ParamValue::Int(1))].into())
        );
        assert_eq!(inner["on"], ParamValue::Bool(false));
        let json: Params = serde_json::from_str(r#"{"a": {"b": [1, 2.5, "x"]}}"#).unwrap();
        assert_eq!(
            json.0["a"],
            ParamValue::Map(
                [(
                    "b".to_string(),
                    ParamValue::List(vec![
                        ParamValue::Int(1),
                        ParamValue::Float(2.5),
                        ParamValue::Str("x".into()),
                    ])
                )]
                .into()
            )
        );
    }

    #[test]
    fn null_values_are_rejected_with_a_hint() {
        let e = serde_saphyr::from_str::<Params>("password_file:\n").unwrap_err();
        let msg = e.without_snippet().to_string();
        assert!(msg.contains("quote an empty value"), "{msg}");
        assert!(msg.contains("line 1"), "{msg}");
    }
}
