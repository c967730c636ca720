//! PayNearMe responses, read liberally: error items may be strings, `order`
//! may come as a one-element `orders` list, numbers may be strings or numbers,
//! unknown fields are ignored.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
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
    /// What a lookup says the order is for (compared before an order found
    /// by its `site_order_identifier` is adopted).
    pub order_amount: Option<String>,
    pub order_currency: Option<String>,
}

/// A string field that may also come as a JSON number or boolean.
fn text(map: &Map<String, Value>, key: &str) -> Option<String> {
    text_of(map.get(key)?.clone())
}

/// A field's text: a non-empty string, a number or a boolean.
fn text_of(value: Value) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() => Some(s),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
impl PnmOrder {
    /// Reads an order object (the tree reader; see [`orders`]).
    fn from_json(map: &Map<String, Value>) -> Self {
        PnmOrder {
            pnm_order_identifier: text(map, "pnm_order_identifier"),
            pnm_customer_identifier: text(map, "pnm_customer_identifier"),
            site_order_identifier: text(map, "site_order_identifier"),
            site_customer_identifier: text(map, "site_customer_identifier"),
            embedded_js_url: text(map, "embedded_js_url"),
            embedded_js_url_expires_at: text(map, "embedded_js_url_expires_at"),
            secure_smart_token: text(map, "secure_smart_token"),
            secure_smart_link: text(map, "secure_smart_link"),
            order_amount: text(map, "order_amount"),
            order_currency: text(map, "order_currency"),
        }
    }
}

/// An answer read straight into what the tool uses: unknown fields are
/// skipped without being built (a whole `Value` tree cost a request more
/// than the rest of reading its answer). Same liberal rules as the `Value`
/// readers below.
#[derive(Debug, Default)]
pub struct Answer {
    /// `"status": "ok"`.
    pub ok: bool,
    /// `orders` (a list or one object), else `order`.
    pub orders: Vec<PnmOrder>,
    /// The `errors` item, as sent.
    pub errors: Option<Value>,
}

impl Answer {
    /// Reads an answer body; `None` unless it is a JSON object.
    pub fn parse(bytes: &[u8]) -> Option<Answer> {
        serde_json::from_slice(bytes).ok()
    }

    /// The first error as (code, description); see [`first_error`].
    pub fn first_error(&self) -> Option<(Option<String>, String)> {
        first_of(self.errors.as_ref()?)
    }
}

impl<'de> Deserialize<'de> for Answer {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct AnswerVisitor;
        impl<'de> Visitor<'de> for AnswerVisitor {
            type Value = Answer;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Answer, A::Error> {
                let (mut answer, mut orders, mut order) = (Answer::default(), None, None);
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    match key.as_ref() {
                        "status" => answer.ok = map.next_value::<Value>()? == "ok",
                        "orders" => orders = map.next_value::<Orders>()?.into_list(),
                        "order" => order = map.next_value::<Orders>()?.into_list(),
                        "errors" => answer.errors = Some(map.next_value()?),
                        _ => drop(map.next_value::<IgnoredAny>()?),
                    }
                }
                answer.orders = orders.or(order).unwrap_or_default();
                Ok(answer)
            }
        }
        d.deserialize_map(AnswerVisitor)
    }
}

/// What an `orders`/`order` value holds: a list (of which only the objects
/// are orders), one object, or anything else (which counts as absent).
enum Orders {
    List(Vec<PnmOrder>),
    One(Box<PnmOrder>),
    Neither,
}

impl Orders {
    fn into_list(self) -> Option<Vec<PnmOrder>> {
        match self {
            Orders::List(orders) => Some(orders),
            Orders::One(order) => Some(vec![*order]),
            Orders::Neither => None,
        }
    }
}

impl<'de> Deserialize<'de> for Orders {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct OrdersVisitor;
        impl<'de> Visitor<'de> for OrdersVisitor {
            type Value = Orders;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("orders")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Orders, A::Error> {
                let mut orders = Vec::new();
                while let Some(item) = seq.next_element::<Orders>()? {
                    if let Orders::One(order) = item {
                        orders.push(*order);
                    }
                }
                Ok(Orders::List(orders))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Orders, A::Error> {
                Ok(Orders::One(Box::new(order_from_map(map)?)))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Orders, E> {
                Ok(Orders::Neither)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Orders, E> {
                Ok(Orders::Neither)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Orders, E> {
                Ok(Orders::Neither)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Orders, E> {
                Ok(Orders::Neither)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Orders, E> {
                Ok(Orders::Neither)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Orders, E> {
                Ok(Orders::Neither)
            }
        }
        d.deserialize_any(OrdersVisitor)
    }
}

fn order_from_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<PnmOrder, A::Error> {
    let mut order = PnmOrder::default();
    while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
        let field = match key.as_ref() {
            "pnm_order_identifier" => &mut order.pnm_order_identifier,
            "pnm_customer_identifier" => &mut order.pnm_customer_identifier,
            "site_order_identifier" => &mut order.site_order_identifier,
            "site_customer_identifier" => &mut order.site_customer_identifier,
            "embedded_js_url" => &mut order.embedded_js_url,
            "embedded_js_url_expires_at" => &mut order.embedded_js_url_expires_at,
            "secure_smart_token" => &mut order.secure_smart_token,
            "secure_smart_link" => &mut order.secure_smart_link,
            "order_amount" => &mut order.order_amount,
            "order_currency" => &mut order.order_currency,
            _ => {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
        };
        *field = map.next_value::<TextOrScalar>()?.0;
    }
    Ok(order)
}

/// A text field that may come as a string, number or boolean (see [`text_of`]).
struct TextOrScalar(Option<String>);

impl<'de> Deserialize<'de> for TextOrScalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(TextOrScalar(text_of(Value::deserialize(d)?)))
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

/// The orders of an answer, read from its tree: what [`Answer`] is checked
/// against.
#[cfg(test)]
fn orders(body: &Map<String, Value>) -> Vec<PnmOrder> {
    order_objects(body)
        .into_iter()
        .map(PnmOrder::from_json)
        .collect()
}

/// The first error of an error answer as (code, description).
pub fn first_error(body: &Map<String, Value>) -> Option<(Option<String>, String)> {
    first_of(body.get("errors")?)
}

/// The first item of an `errors` value (a list, or one item) as (code,
/// description).
fn first_of(errors: &Value) -> Option<(Option<String>, String)> {
    let first = match errors {
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

    fn any_json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let keys = prop::sample::select(vec![
            "status",
            "order",
            "orders",
            "errors",
            "code",
            "description",
            "pnm_order_identifier",
            "site_order_identifier",
            "embedded_js_url",
            "secure_smart_token",
            "other",
        ]);
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-1e6f64..1e6).prop_map(Value::from),
            prop::sample::select(vec!["ok", "error", "", "P1", "é\"x"]).prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 48, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec((keys.clone(), inner), 0..6).prop_map(|pairs| Value::Object(
                    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
                )),
            ]
        })
    }

    proptest::proptest! {
        /// The direct reader and the `Value` readers agree on any answer.
        #[test]
        fn direct_reader_agrees_with_the_value_readers(
            body in proptest::collection::vec(
                (proptest::sample::select(vec!["status", "order", "orders", "errors", "x"]), any_json()),
                0..5,
            )
        ) {
            let text = format!(
                "{{{}}}",
                body.iter()
                    .map(|(k, v)| format!("{}:{v}", Value::from(*k)))
                    .collect::<Vec<_>>()
                    .join(",")
            );
            let map = obj(serde_json::from_str(&text).unwrap());
            let answer = Answer::parse(text.as_bytes()).expect("an object");
            proptest::prop_assert_eq!(answer.ok, is_ok(&map), "{}", text);
            proptest::prop_assert_eq!(&answer.orders, &orders(&map), "{}", text);
            proptest::prop_assert_eq!(answer.first_error(), first_error(&map), "{}", text);
        }
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
