//! Free-form `params` maps of handlers, sources and the repository, typed
//! just enough for YAML (strings, numbers, booleans, lists, maps).

use std::collections::BTreeMap;

use serde::Deserialize;

/// A `params` map: merged from handler and source, read by handlers and the
/// repository through the typed getters below.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(transparent)]
pub struct Params(pub BTreeMap<String, ParamValue>);

/// One parameter value.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
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
mod tests {
    use super::*;

    fn p(pairs: &[(&str, ParamValue)]) -> Params {
        Params(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        )
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
        assert_eq!(m.get_str_list("env").unwrap(), vec!["x".to_string()]);
    }
}
