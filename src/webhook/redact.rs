//! Secrets out of Kafka: named fields (anywhere) and JSON pointers (one place) are replaced or
//! removed before the payload is published. When nothing matched, the original bytes go
//! through untouched; the caller re-serialises only when something was redacted.

use std::collections::HashSet;

use serde_json::Value;

use crate::config::RedactConfig;

/// Deepest level the field walk descends; serde_json refuses deeper documents anyway (128).
const MAX_DEPTH: usize = 256;

/// The redaction rules, built once.
#[derive(Debug, Clone)]
pub struct Redactor {
    /// Field names redacted at any depth.
    fields: HashSet<String>,
    /// JSON pointers redacted at exactly that place.
    pointers: Vec<String>,
    /// Remove instead of replacing.
    remove: bool,
    /// The replacement value.
    replacement: Value,
}

impl Redactor {
    /// Builds the rules from `[redact]`.
    pub fn new(config: &RedactConfig) -> Self {
        Self {
            fields: config.fields.iter().cloned().collect(),
            pointers: config.pointers.clone(),
            remove: config.remove,
            replacement: Value::String(config.replacement.clone()),
        }
    }

    /// True when there is nothing to redact, so callers can skip the walk.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty() && self.pointers.is_empty()
    }

    /// Redacts `document` in place; returns how many values were redacted.
    pub fn apply(&self, document: &mut Value) -> usize {
        let mut count = 0;
        if !self.fields.is_empty() {
            count += self.redact_fields(document, 0);
        }
        for pointer in &self.pointers {
            count += usize::from(self.redact_pointer(document, pointer));
        }
        count
    }

    fn redact_fields(&self, value: &mut Value, depth: usize) -> usize {
        if depth > MAX_DEPTH {
            return 0;
        }
        match value {
            Value::Object(map) => {
                let mut count = 0;
                if self.remove {
                    let before = map.len();
                    map.retain(|key, _| !self.fields.contains(key));
                    count += before - map.len();
                } else {
                    for (key, field) in map.iter_mut() {
                        if self.fields.contains(key) && !field.is_null() {
                            *field = self.replacement.clone();
                            count += 1;
                        }
                    }
                }
                count
                    + map
                        .values_mut()
                        .map(|v| self.redact_fields(v, depth + 1))
                        .sum::<usize>()
            }
            Value::Array(items) => items
                .iter_mut()
                .map(|v| self.redact_fields(v, depth + 1))
                .sum(),
            _ => 0,
        }
    }

    fn redact_pointer(&self, document: &mut Value, pointer: &str) -> bool {
        if self.remove {
            let Some((parent, last)) = pointer.rsplit_once('/') else {
                return false;
            };
            let key = last.replace("~1", "/").replace("~0", "~");
            match document.pointer_mut(parent) {
                Some(Value::Object(map)) => map.remove(&key).is_some(),
                Some(Value::Array(items)) => match key.parse::<usize>() {
                    Ok(index) if index < items.len() => {
                        items.remove(index);
                        true
                    }
                    _ => false,
                },
                _ => false,
            }
        } else {
            match document.pointer_mut(pointer) {
                Some(value) if !value.is_null() => {
                    *value = self.replacement.clone();
                    true
                }
                _ => false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn redactor(configure: impl FnOnce(&mut RedactConfig)) -> Redactor {
        let mut config = RedactConfig::default();
        configure(&mut config);
        Redactor::new(&config)
    }

    #[test]
    fn default_fields_are_masked_wherever_they_appear() {
        let mut doc = json!({"data": {"promoter": {"auth_token": "abc", "temp_password": "pw", "email": "e"},
                                      "promotions": [{"promoter": {"auth_token": "def"}}]}});
        assert_eq!(redactor(|_| {}).apply(&mut doc), 3);
        assert_eq!(doc["data"]["promoter"]["auth_token"], "[redacted]");
        assert_eq!(doc["data"]["promoter"]["temp_password"], "[redacted]");
        assert_eq!(
            doc["data"]["promotions"][0]["promoter"]["auth_token"],
            "[redacted]"
        );
        assert_eq!(doc["data"]["promoter"]["email"], "e");
    }

    #[test]
    fn null_secrets_are_left_alone_and_count_nothing() {
        let mut doc = json!({"data": {"promoter": {"temp_password": null}}});
        assert_eq!(redactor(|_| {}).apply(&mut doc), 0);
        assert_eq!(doc["data"]["promoter"]["temp_password"], Value::Null);
    }

    #[test]
    fn pointers_and_removal() {
        let r = redactor(|c| {
            c.pointers = vec!["/data/promoter/email".into(), "/data/missing".into()];
            c.remove = true;
        });
        let mut doc = json!({"data": {"promoter": {"auth_token": "abc", "email": "e", "id": 1}}});
        assert_eq!(r.apply(&mut doc), 2);
        assert_eq!(doc, json!({"data": {"promoter": {"id": 1}}}));
    }

    #[test]
    fn an_empty_rule_set_is_empty() {
        assert!(redactor(|c| c.fields.clear()).is_empty());
        assert!(!redactor(|_| {}).is_empty());
    }
}
