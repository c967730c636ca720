//! PayNearMe responses, read liberally: error items may be strings, `order`
//! may come as a one-element `orders` list, numbers may be strings or numbers,
//! unknown fields are ignored.

use serde_json::{Map, Value};

/// The order fields the tool uses from any PayNearMe answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PnmOrder {
    pub pnm_order_identifier: Option<String>,
    pub pnm_customer_identifier: Option<String>,
    pub site_order_identifier: Option<String>,
    pub site_customer_identifier: Option<String>,
    pub embedded_js_url: Option<String>,
    pub embedded_js_url_expires_at: Option<String>,
    pub secure_smart_token: Option<String>,
    pub secure_smart_link: Option<String>,
}

/// A string field that may also come as a JSON number or boolean.
fn text(map: &Map<String, Value>, key: &str) -> Option<String> {
    match map.get(key)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

impl PnmOrder {
    /// Reads an order object.
    pub fn from_json(map: &Map<String, Value>) -> Self {
        PnmOrder {
            pnm_order_identifier: text(map, "pnm_order_identifier"),
            pnm_customer_identifier: text(map, "pnm_customer_identifier"),
            site_order_identifier: text(map, "site_order_identifier"),
            site_customer_identifier: text(map, "site_customer_identifier"),
            embedded_js_url: text(map, "embedded_js_url"),
            embedded_js_url_expires_at: text(map, "embedded_js_url_expires_at"),
            secure_smart_token: text(map, "secure_smart_token"),
            secure_smart_link: text(map, "secure_smart_link"),
        }
    }
}

/// The order objects of an answer: an `orders` list, or a single `order`.
pub fn order_objects(body: &Map<String, Value>) -> Vec<&Map<String, Value>> {
    let list = match (body.get("orders"), body.get("order")) {
        (Some(Value::Array(items)), _) => items.iter().collect(),
        (Some(Value::Object(_)), _) => vec![&body["orders"]],
        (_, Some(Value::Array(items))) => items.iter().collect(),
        (_, Some(Value::Object(_))) => vec![&body["order"]],
        _ => Vec::new(),
    };
    list.into_iter().filter_map(Value::as_object).collect()
}

/// The orders of an answer.
pub fn orders(body: &Map<String, Value>) -> Vec<PnmOrder> {
    order_objects(body)
        .into_iter()
        .map(PnmOrder::from_json)
        .collect()
}

/// The first error of an error answer as (code, description).
pub fn first_error(body: &Map<String, Value>) -> Option<(Option<String>, String)> {
    let first = match body.get("errors")? {
        Value::Array(items) => items.first()?,
        other => other,
    };
    Some(match first {
        Value::String(s) => (None, s.clone()),
        Value::Object(map) => (
            text(map, "code"),
            text(map, "description")
                .or_else(|| text(map, "message"))
                .unwrap_or_default(),
        ),
        other => (None, other.to_string()),
    })
}

/// Whether the answer says `"status": "ok"`.
pub fn is_ok(body: &Map<String, Value>) -> bool {
    body.get("status").and_then(Value::as_str) == Some("ok")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn reads_order_as_object_or_one_element_list() {
        let single = obj(json!({"status":"ok","order":{"pnm_order_identifier":"P1"}}));
        let listed = obj(json!({"status":"ok","orders":[{"pnm_order_identifier":"P1"}]}));
        assert_eq!(orders(&single), orders(&listed));
        assert_eq!(
            orders(&single)[0].pnm_order_identifier.as_deref(),
            Some("P1")
        );
    }

    #[test]
    fn numbers_may_come_as_numbers() {
        let body = obj(json!({"order":{"pnm_order_identifier":81234,"site_order_identifier":"A"}}));
        let order = &orders(&body)[0];
        assert_eq!(order.pnm_order_identifier.as_deref(), Some("81234"));
        assert_eq!(order.site_order_identifier.as_deref(), Some("A"));
    }

    #[test]
    fn unknown_fields_are_ignored_and_empty_lists_are_empty() {
        let body = obj(json!({"status":"ok","orders":[],"extra":{"x":1}}));
        assert!(orders(&body).is_empty());
        assert!(is_ok(&body));
    }

    #[test]
    fn errors_may_be_objects_or_strings() {
        let objects = obj(
            json!({"status":"error","errors":[{"code":"invalid_parameter","description":"order_amount is bad"}]}),
        );
        assert_eq!(
            first_error(&objects),
            Some((
                Some("invalid_parameter".into()),
                "order_amount is bad".into()
            ))
        );
        let strings = obj(json!({"status":"error","errors":["Bad amount"]}));
        assert_eq!(first_error(&strings), Some((None, "Bad amount".into())));
        assert!(!is_ok(&strings));
    }
}
