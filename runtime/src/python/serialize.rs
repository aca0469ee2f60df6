//! Python objects to JSON bytes with sonic-rs: dict, list, tuple, str, int, float, bool and None.
//!
//! Invariant: output is always valid JSON. Anything that has no faithful JSON form (NaN, infinities,
//! integers beyond 64 bits, non-string keys other than int/float/bool, other types, cycles deeper than
//! `MAX_DEPTH`) is an error naming the type, never a guess.

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use serde::ser::{Error as _, SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};

const MAX_DEPTH: usize = 255;

struct Json<'a, 'py> {
    value: &'a Bound<'py, PyAny>,
    depth: usize,
}

impl Serialize for Json<'_, '_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let value = self.value;
        if self.depth > MAX_DEPTH {
            return Err(S::Error::custom(
                "JSON nesting is too deep (recursive structure?)",
            ));
        }
        // Exact-type checks first: they are pointer compares, and cover nearly every response.
        if let Ok(text) = value.cast_exact::<PyString>() {
            return serializer.serialize_str(text.to_str().map_err(S::Error::custom)?);
        }
        if let Ok(dict) = value.cast::<PyDict>() {
            let mut map = serializer.serialize_map(Some(dict.len()))?;
            for (key, item) in dict.iter() {
                map.serialize_key(&key_text(&key).map_err(S::Error::custom)?)?;
                map.serialize_value(&Json {
                    value: &item,
                    depth: self.depth + 1,
                })?;
            }
            return map.end();
        }
        if let Ok(list) = value.cast::<PyList>() {
            let mut seq = serializer.serialize_seq(Some(list.len()))?;
            for item in list.iter() {
                seq.serialize_element(&Json {
                    value: &item,
                    depth: self.depth + 1,
                })?;
            }
            return seq.end();
        }
        if value.is_none() {
            return serializer.serialize_unit();
        }
        if let Ok(flag) = value.cast::<PyBool>() {
            return serializer.serialize_bool(flag.is_true());
        }
        if value.cast::<PyInt>().is_ok() {
            if let Ok(n) = value.extract::<i64>() {
                return serializer.serialize_i64(n);
            }
            if let Ok(n) = value.extract::<u64>() {
                return serializer.serialize_u64(n);
            }
            return Err(S::Error::custom("integer does not fit in 64 bits"));
        }
        if let Ok(number) = value.cast::<PyFloat>() {
            let n = number.value();
            if !n.is_finite() {
                return Err(S::Error::custom(format!("{n} is not valid JSON")));
            }
            return serializer.serialize_f64(n);
        }
        if let Ok(text) = value.cast::<PyString>() {
            return serializer.serialize_str(text.to_str().map_err(S::Error::custom)?);
        }
        if let Ok(tuple) = value.cast::<PyTuple>() {
            let mut seq = serializer.serialize_seq(Some(tuple.len()))?;
            for item in tuple.iter() {
                seq.serialize_element(&Json {
                    value: &item,
                    depth: self.depth + 1,
                })?;
            }
            return seq.end();
        }
        let type_name = value
            .get_type()
            .name()
            .map(|n| n.to_string())
            .unwrap_or_else(|_| "?".into());
        Err(S::Error::custom(format!(
            "Object of type {type_name} is not JSON serializable"
        )))
    }
}

fn key_text(key: &Bound<'_, PyAny>) -> Result<String, String> {
    if let Ok(text) = key.cast::<PyString>() {
        return text.to_str().map(str::to_owned).map_err(|e| e.to_string());
    }
    if let Ok(flag) = key.cast::<PyBool>() {
        return Ok(if flag.is_true() { "true" } else { "false" }.into());
    }
    if key.cast::<PyInt>().is_ok() || key.cast::<PyFloat>().is_ok() {
        return key.str().map(|s| s.to_string()).map_err(|e| e.to_string());
    }
    if key.is_none() {
        return Ok("null".into());
    }
    Err("dict keys must be str, int, float, bool or None".into())
}

/// Serialises `value` to JSON; a value that has no JSON form raises `TypeError`.
pub fn to_json(value: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    sonic_rs::to_vec(&Json { value, depth: 0 }).map_err(|e| PyTypeError::new_err(e.to_string()))
}
