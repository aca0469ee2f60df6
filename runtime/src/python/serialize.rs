//! Python objects to JSON bytes with sonic-rs: dict, list, tuple, str, int, float, bool and None.
//!
//! Invariant: output is always valid JSON. Anything that has no faithful JSON form (NaN, infinities,
//! integers beyond 64 bits, non-string keys other than int/float/bool, other types, cycles deeper than
//! `MAX_DEPTH`) is an error naming the type, never a guess.

use pyo3::exceptions::PyTypeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use pyo3::IntoPyObject;
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
        // Dataclass instances and pydantic models: their fields, as `dataclasses.asdict` /
        // `model_dump(mode="json")` give them.
        if let Some(plain) = plain_data(value).map_err(S::Error::custom)? {
            return Json {
                value: &plain,
                depth: self.depth + 1,
            }
            .serialize(serializer);
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

/// The plain data of a dataclass instance or a pydantic model, or None for anything else.
fn plain_data<'py>(value: &Bound<'py, PyAny>) -> PyResult<Option<Bound<'py, PyAny>>> {
    let py = value.py();
    let is_class = value.is_instance_of::<pyo3::types::PyType>();
    if !is_class && value.hasattr(intern!(py, "__dataclass_fields__"))? {
        let asdict = py.import("dataclasses")?.getattr(intern!(py, "asdict"))?;
        return Ok(Some(asdict.call1((value,))?));
    }
    if !is_class && value.hasattr(intern!(py, "model_dump"))? {
        let kwargs = PyDict::new(py);
        kwargs.set_item(intern!(py, "mode"), intern!(py, "json"))?;
        return Ok(Some(value.call_method(
            intern!(py, "model_dump"),
            (),
            Some(&kwargs),
        )?));
    }
    Ok(None)
}

/// A dict key JSON cannot have (serde takes it as a custom error's message).
#[derive(Debug)]
enum KeyError {
    /// Reading the key's text raised (a `str` that is not valid UTF-8, a failing `__str__`).
    Python(PyErr),
    Unsupported,
}

impl std::fmt::Display for KeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyError::Python(err) => err.fmt(f),
            KeyError::Unsupported => f.write_str("dict keys must be str, int, float, bool or None"),
        }
    }
}

fn key_text(key: &Bound<'_, PyAny>) -> Result<String, KeyError> {
    if let Ok(text) = key.cast::<PyString>() {
        return text.to_str().map(str::to_owned).map_err(KeyError::Python);
    }
    if let Ok(flag) = key.cast::<PyBool>() {
        return Ok(if flag.is_true() { "true" } else { "false" }.into());
    }
    if key.cast::<PyInt>().is_ok() || key.cast::<PyFloat>().is_ok() {
        return key.str().map(|s| s.to_string()).map_err(KeyError::Python);
    }
    if key.is_none() {
        return Ok("null".into());
    }
    Err(KeyError::Unsupported)
}

/// Serialises `value` to JSON; a value that has no JSON form raises `TypeError`.
pub(super) fn to_json(value: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    sonic_rs::to_vec(&Json { value, depth: 0 }).map_err(|e| PyTypeError::new_err(e.to_string()))
}

/// Builds Python objects straight from the JSON token stream (no intermediate tree): objects → dict,
/// arrays → list, strings → str, integers → int (any size that fits 64 bits; larger ones → float, as
/// sonic-rs reads them), other numbers → float, true/false → bool, null → None.
struct PyValue<'py>(Python<'py>);

impl<'de, 'py> serde::de::DeserializeSeed<'de> for PyValue<'py> {
    type Value = Bound<'py, PyAny>;

    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de, 'py> serde::de::Visitor<'de> for PyValue<'py> {
    type Value = Bound<'py, PyAny>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(PyBool::new(self.0, v).to_owned().into_any())
    }

    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(v.into_pyobject(self.0).unwrap().into_any())
    }

    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(v.into_pyobject(self.0).unwrap().into_any())
    }

    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(PyFloat::new(self.0, v).into_any())
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(PyString::new(self.0, v).into_any())
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(self.0.None().into_bound(self.0))
    }

    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(self.0.None().into_bound(self.0))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let list = PyList::empty(self.0);
        while let Some(item) = seq.next_element_seed(PyValue(self.0))? {
            list.append(item).map_err(serde::de::Error::custom)?;
        }
        Ok(list.into_any())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let dict = PyDict::new(self.0);
        while let Some(key) = map.next_key_seed(PyValue(self.0))? {
            let value = map.next_value_seed(PyValue(self.0))?;
            dict.set_item(key, value)
                .map_err(serde::de::Error::custom)?;
        }
        Ok(dict.into_any())
    }
}

/// Parses JSON bytes into Python objects with sonic-rs; the error text says what and where.
pub(super) fn from_json<'py>(py: Python<'py>, bytes: &[u8]) -> Result<Bound<'py, PyAny>, String> {
    use serde::de::DeserializeSeed;
    let mut deserializer = sonic_rs::Deserializer::from_slice(bytes);
    let value = PyValue(py)
        .deserialize(&mut deserializer)
        .map_err(|e| e.to_string())?;
    deserializer.end().map_err(|e| e.to_string())?;
    Ok(value)
}
