//! One CNI network: a configuration list (`.conflist`), or a single plugin's config (`.conf`,
//! `.json`) wrapped into a list the way libcni does it. Parsed from bytes the daemon read with a
//! size bound; checked before any plugin runs.

use serde_json::{Map, Value};

use super::error::CniError;

/// The CNI versions whose configs and results this runtime speaks.
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// A checked network configuration list.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfigList {
    pub name: String,
    pub cni_version: String,
    /// Each plugin's config object as written (its `type` checked).
    pub plugins: Vec<Map<String, Value>>,
    /// The list as JSON text: the file's exact bytes for a `.conflist`, the wrapped list for a
    /// single-plugin config. This is what the cache keeps for DEL.
    pub text: String,
    /// Where it was read from (a file path, or "(cached)").
    pub source: String,
    /// `disableCheck`: the administrator turned CHECK off for this network.
    pub disable_check: bool,
}

/// Whether `t` may name a plugin binary (one path component, nothing that walks).
pub fn valid_plugin_type(t: &str) -> bool {
    !t.is_empty() && !t.contains('/') && !t.contains("..") && !t.contains('\0') && t != "."
}

/// The CNI spec's network name rule: `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`.
fn valid_network_name(n: &str) -> bool {
    let mut chars = n.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn invalid(source_name: &str, message: impl Into<String>) -> CniError {
    CniError::InvalidConfig { source_name: source_name.to_string(), message: message.into() }
}

fn string_field<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    source_name: &str,
) -> Result<&'a str, CniError> {
    match obj.get(key) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(invalid(source_name, format!("{key:?} must be a string"))),
        None => Err(invalid(source_name, format!("{key:?} is missing"))),
    }
}

fn check_plugin(p: &Value, i: usize, source_name: &str) -> Result<Map<String, Value>, CniError> {
    let Value::Object(obj) = p else {
        return Err(invalid(source_name, format!("plugins[{i}] is not an object")));
    };
    let t = string_field(obj, "type", source_name)
        .map_err(|_| invalid(source_name, format!("plugins[{i}] has no \"type\" string")))?;
    if !valid_plugin_type(t) {
        return Err(invalid(
            source_name,
            format!("plugins[{i}] type {t:?} is not a plugin name (no '/' or '..')"),
        ));
    }
    if let Some(caps) = obj.get("capabilities") {
        let ok = caps.as_object().is_some_and(|m| m.values().all(Value::is_boolean));
        if !ok {
            return Err(invalid(
                source_name,
                format!("plugins[{i}] capabilities must map names to true/false"),
            ));
        }
    }
    Ok(obj.clone())
}

fn check_head(obj: &Map<String, Value>, source_name: &str) -> Result<(String, String), CniError> {
    let name = string_field(obj, "name", source_name)?;
    if !valid_network_name(name) {
        return Err(invalid(source_name, format!("network name {name:?} is not a valid CNI name")));
    }
    let version = string_field(obj, "cniVersion", source_name)?;
    if !SUPPORTED_VERSIONS.contains(&version) {
        return Err(invalid(
            source_name,
            format!(
                "cniVersion {version:?} is not supported (supported: {})",
                SUPPORTED_VERSIONS.join(", ")
            ),
        ));
    }
    Ok((name.to_string(), version.to_string()))
}

fn object_of(bytes: &[u8], source_name: &str) -> Result<Map<String, Value>, CniError> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(invalid(source_name, "not a JSON object")),
        Err(e) => Err(invalid(source_name, format!("not valid JSON: {e}"))),
    }
}

impl NetworkConfigList {
    /// A `.conflist`: `{"cniVersion", "name", "plugins": [...]}`.
    pub fn from_conflist(bytes: &[u8], source_name: &str) -> Result<NetworkConfigList, CniError> {
        let obj = object_of(bytes, source_name)?;
        let (name, cni_version) = check_head(&obj, source_name)?;
        let plugins = match obj.get("plugins") {
            Some(Value::Array(a)) if !a.is_empty() => a,
            Some(Value::Array(_)) => return Err(invalid(source_name, "\"plugins\" is empty")),
            _ => return Err(invalid(source_name, "\"plugins\" must be a list of plugin configs")),
        };
        let plugins = plugins
            .iter()
            .enumerate()
            .map(|(i, p)| check_plugin(p, i, source_name))
            .collect::<Result<Vec<_>, _>>()?;
        let text = String::from_utf8(bytes.to_vec())
            .map_err(|_| invalid(source_name, "not UTF-8 text"))?;
        let disable_check = obj.get("disableCheck").and_then(Value::as_bool).unwrap_or(false);
        let source = source_name.to_string();
        Ok(NetworkConfigList { name, cni_version, plugins, text, source, disable_check })
    }

    /// A single plugin's config (`.conf`/`.json`), wrapped into a list of one.
    pub fn from_conf(bytes: &[u8], source_name: &str) -> Result<NetworkConfigList, CniError> {
        let obj = object_of(bytes, source_name)?;
        if obj.contains_key("plugins") {
            // libcni reads such a file as a list too.
            return NetworkConfigList::from_conflist(bytes, source_name);
        }
        let (name, cni_version) = check_head(&obj, source_name)?;
        let plugin = check_plugin(&Value::Object(obj), 0, source_name)?;
        let list = serde_json::json!({
            "cniVersion": cni_version,
            "name": name,
            "plugins": [plugin],
        });
        let text = list.to_string();
        let source = source_name.to_string();
        let plugins = vec![plugin];
        Ok(NetworkConfigList { name, cni_version, plugins, text, source, disable_check: false })
    }

    /// A list read back from the cache (always list form).
    pub fn from_cached(text: &str) -> Result<NetworkConfigList, CniError> {
        NetworkConfigList::from_conflist(text.as_bytes(), "(cached)")
    }

    /// The `type` of plugin `i` (checked when parsed).
    pub fn plugin_type(&self, i: usize) -> &str {
        self.plugins.get(i).and_then(|p| p.get("type")).and_then(Value::as_str).unwrap_or("")
    }

    /// Whether plugin `i` declares capability `cap` as true.
    pub fn has_capability(&self, i: usize, cap: &str) -> bool {
        self.plugins
            .get(i)
            .and_then(|p| p.get("capabilities"))
            .and_then(|c| c.get(cap))
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }

    /// Whether results of this list use the 0.3.x format (no prevResult on DEL, libcni's rule).
    pub fn is_pre_0_4(&self) -> bool {
        self.cni_version.starts_with("0.3.")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = r#"{"cniVersion":"1.0.0","name":"net1","plugins":[
        {"type":"bridge","bridge":"cni0"},
        {"type":"portmap","capabilities":{"portMappings":true}}]}"#;

    #[test]
    fn a_conflist_is_parsed_and_keeps_its_bytes() {
        let l = NetworkConfigList::from_conflist(LIST.as_bytes(), "a.conflist").unwrap();
        assert_eq!((l.name.as_str(), l.cni_version.as_str()), ("net1", "1.0.0"));
        assert_eq!(l.plugins.len(), 2);
        assert_eq!(l.plugin_type(1), "portmap");
        assert!(l.has_capability(1, "portMappings"));
        assert!(!l.has_capability(0, "portMappings"));
        assert_eq!(l.text, LIST);
        assert_eq!(l.source, "a.conflist");
        assert!(!l.disable_check);
        let cached = NetworkConfigList::from_cached(&l.text).unwrap();
        assert_eq!((cached.plugins, cached.text), (l.plugins, l.text));
    }

    #[test]
    fn a_single_conf_is_wrapped_into_a_list() {
        let conf =
            r#"{"cniVersion":"0.4.0","name":"one","type":"bridge","ipam":{"type":"host-local"}}"#;
        let l = NetworkConfigList::from_conf(conf.as_bytes(), "a.conf").unwrap();
        assert_eq!((l.name.as_str(), l.plugins.len()), ("one", 1));
        assert_eq!(l.plugin_type(0), "bridge");
        assert!(!l.is_pre_0_4());
        let again = NetworkConfigList::from_cached(&l.text).unwrap();
        assert_eq!(again.plugins, l.plugins);
    }

    #[test]
    fn invalid_configs_say_what_is_wrong() {
        let cases = [
            ("[]", "not a JSON object"),
            ("{", "not valid JSON"),
            (r#"{"cniVersion":"1.0.0","plugins":[{"type":"x"}]}"#, "\"name\" is missing"),
            (r#"{"cniVersion":"1.0.0","name":"-x","plugins":[{"type":"x"}]}"#, "not a valid"),
            (r#"{"cniVersion":"0.2.0","name":"n","plugins":[{"type":"x"}]}"#, "not supported"),
            (r#"{"name":"n","plugins":[{"type":"x"}]}"#, "cniVersion"),
            (r#"{"cniVersion":"1.0.0","name":"n","plugins":[]}"#, "empty"),
            (r#"{"cniVersion":"1.0.0","name":"n","plugins":[{}]}"#, "no \"type\""),
            (r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"../sh"}]}"#, "not a plugin"),
            (r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"a/b"}]}"#, "not a plugin"),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"a","capabilities":[1]}]}"#,
                "capabilities",
            ),
        ];
        for (text, want) in cases {
            let e = NetworkConfigList::from_conflist(text.as_bytes(), "f").unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
            assert!(e.contains("CNI config f"), "{e}");
        }
        let e = NetworkConfigList::from_conf(br#"{"cniVersion":"1.0.0","name":"n"}"#, "c")
            .unwrap_err()
            .to_string();
        assert!(e.contains("type"), "{e}");
    }
}
