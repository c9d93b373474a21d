//! Subscriptions, event types and delivery records (API reference "Webhooks"), typed leniently:
//! ids may come as numbers or strings, and fields the relay does not use are ignored.

use std::time::SystemTime;

use http::Method;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

use super::client::{ApiClient, ApiError};
use super::parse_time;

/// Largest page the API serves.
pub const PER_PAGE: usize = 100;

/// Most pages read of one list (10,000 records): a bound for an API that ignores `page`.
pub const MAX_PAGES: usize = 100;

/// Attempts of each call (the client's retry rules: timeouts, 5xx, 429).
const ATTEMPTS: u32 = 5;

/// A webhook subscription.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Subscription {
    #[serde(deserialize_with = "any_id")]
    pub id: String,
    #[serde(default)]
    pub url: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub event_types: Vec<String>,
    #[serde(default)]
    pub active: Option<bool>,
    #[serde(default)]
    pub timeout: Option<u64>,
    #[serde(default)]
    pub max_retries: Option<u64>,
    /// Custom headers sent with every delivery (may hold the relay's token).
    #[serde(default)]
    pub headers: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    pub basic_auth_user: Option<String>,
}

/// One delivery of one event to one subscription, with its recorded payload as `P`:
/// `serde_json::Value` where the payload is needed (`recover`), [`NoPayload`] where only the
/// status counts (reconciliation, `status`), so that pages of payloads are never kept.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Delivery<P = serde_json::Value> {
    #[serde(deserialize_with = "any_id")]
    pub id: String,
    #[serde(default, deserialize_with = "any_optional_id")]
    pub event_id: Option<String>,
    #[serde(default)]
    pub event_type: Option<String>,
    /// `pending`, `delivered`, `retrying` or `failed`.
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub attempts: Option<u64>,
    #[serde(default)]
    pub last_error: Option<String>,
    #[serde(default)]
    pub response_code: Option<u16>,
    /// The exact JSON that was (or will be) sent.
    #[serde(default = "none")]
    pub payload: Option<P>,
    #[serde(default)]
    pub created_at: Option<String>,
}

/// A payload read past without being kept.
pub type NoPayload = serde::de::IgnoredAny;

/// A delivery's status and times only.
pub type DeliveryStatus = Delivery<NoPayload>;

fn none<P>() -> Option<P> {
    None
}

impl<P> Delivery<P> {
    /// When FirstPromoter created it, if it says so readably.
    pub fn created(&self) -> Option<SystemTime> {
        self.created_at.as_deref().and_then(parse_time)
    }

    /// Not delivered (yet or for good).
    pub fn is_undelivered(&self) -> bool {
        matches!(self.status.as_str(), "pending" | "retrying" | "failed")
    }
}

/// A list read page by page, and whether it was read to its end.
#[derive(Debug, Clone, PartialEq)]
pub struct Listed<T> {
    pub items: Vec<T>,
    /// Why the list was not read to the end of the window, when it was not.
    pub cut_short: Option<String>,
}

/// The webhook endpoints of one client.
pub struct Webhooks<'a> {
    client: &'a ApiClient,
}

impl<'a> Webhooks<'a> {
    pub fn new(client: &'a ApiClient) -> Self {
        Self { client }
    }

    /// Every event type a subscription can name.
    pub async fn event_types(&self) -> Result<Vec<String>, ApiError> {
        let answer = self
            .client
            .json(
                "event_types",
                Method::GET,
                "/webhooks/event_types",
                None,
                ATTEMPTS,
            )
            .await?;
        let list = answer.get("data").cloned().unwrap_or(answer);
        serde_json::from_value(list).map_err(|e| ApiError::Malformed(format!("event_types: {e}")))
    }

    /// Every subscription of the account.
    pub async fn subscriptions(&self) -> Result<Vec<Subscription>, ApiError> {
        let mut all = Vec::new();
        for page in 1..=MAX_PAGES {
            let path = format!("/webhooks?page={page}&per_page={PER_PAGE}");
            let batch: Vec<Subscription> = self.list("list_webhooks", &path).await?;
            let last = batch.len() < PER_PAGE;
            all.extend(batch);
            if last {
                break;
            }
        }
        Ok(all)
    }

    /// Creates a subscription from `body`.
    pub async fn create(&self, body: &serde_json::Value) -> Result<Subscription, ApiError> {
        let answer = self
            .client
            .json("create_webhook", Method::POST, "/webhooks", Some(body), 1)
            .await?;
        one("create_webhook", answer)
    }

    /// Replaces subscription `id`'s settings with `body`.
    pub async fn update(
        &self,
        id: &str,
        body: &serde_json::Value,
    ) -> Result<Subscription, ApiError> {
        let path = format!("/webhooks/{id}");
        let answer = self
            .client
            .json("update_webhook", Method::PUT, &path, Some(body), ATTEMPTS)
            .await?;
        one("update_webhook", answer)
    }

    /// The deliveries of subscription `id` created at or after `since`, paging 100 at a time.
    /// Pages are read until a short one, or, when the API lists newest first, until a page
    /// reaches back before `since`; after [`MAX_PAGES`] the list is returned with `cut_short`
    /// saying what was not read.
    pub async fn deliveries<P: DeserializeOwned>(
        &self,
        id: &str,
        since: SystemTime,
    ) -> Result<Listed<Delivery<P>>, ApiError> {
        let mut all = Vec::new();
        let mut cut_short = None;
        for page in 1..=MAX_PAGES {
            let path = format!("/webhooks/{id}/webhook_deliveries?page={page}&per_page={PER_PAGE}");
            let batch: Vec<Delivery<P>> = self.list("list_deliveries", &path).await?;
            let short = batch.len() < PER_PAGE;
            let times: Vec<SystemTime> = batch.iter().filter_map(Delivery::created).collect();
            let newest_first = times.windows(2).all(|pair| pair[0] >= pair[1]);
            let reached_back = newest_first && times.last().is_some_and(|last| *last < since);
            let last = times.last().copied();
            all.extend(
                batch
                    .into_iter()
                    .filter(|d| d.created().is_none_or(|at| at >= since)),
            );
            if short || reached_back {
                break;
            }
            if page == MAX_PAGES {
                let beyond = match last {
                    Some(at) => format!(
                        "deliveries created {} {} were not read",
                        if newest_first { "before" } else { "after" },
                        humantime::format_rfc3339_seconds(at)
                    ),
                    None => "later pages were not read".to_owned(),
                };
                cut_short = Some(format!(
                    "subscription {id}: stopped after {MAX_PAGES} pages of {PER_PAGE} \
                     deliveries; {beyond} (a shorter window reads them)"
                ));
            }
        }
        Ok(Listed {
            items: all,
            cut_short,
        })
    }

    /// One delivery of subscription `id`, as it is now.
    pub async fn delivery(&self, id: &str, delivery: &str) -> Result<DeliveryStatus, ApiError> {
        let path = format!("/webhooks/{id}/webhook_deliveries/{delivery}");
        let answer = self
            .client
            .json("get_delivery", Method::GET, &path, None, ATTEMPTS)
            .await?;
        one("get_delivery", answer)
    }

    /// Asks FirstPromoter to send delivery `delivery` again. `Rejected { 422 }` when the
    /// subscription's `max_retries` is already spent.
    pub async fn retry_delivery(&self, id: &str, delivery: &str) -> Result<(), ApiError> {
        let path = format!("/webhooks/{id}/webhook_deliveries/{delivery}/retry_delivery");
        self.client
            .json("retry_delivery", Method::POST, &path, None, ATTEMPTS)
            .await
            .map(|_| ())
    }

    /// One page: a JSON array as the reference says, or `{"data": [...]}`; parsed straight
    /// from the answer's bytes into `T`, so that nothing `T` leaves out is kept.
    async fn list<T: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        path: &str,
    ) -> Result<Vec<T>, ApiError> {
        #[derive(Deserialize)]
        #[serde(bound = "T: DeserializeOwned")]
        struct Wrapped<T> {
            data: Vec<T>,
        }
        let answer = self
            .client
            .body(endpoint, Method::GET, path, None, ATTEMPTS)
            .await?;
        let first = answer.iter().find(|b| !b.is_ascii_whitespace());
        let parsed = if first == Some(&b'{') {
            serde_json::from_slice::<Wrapped<T>>(&answer).map(|w| w.data)
        } else {
            serde_json::from_slice::<Vec<T>>(&answer)
        };
        parsed.map_err(|e| ApiError::Malformed(format!("{endpoint}: {e}")))
    }
}

/// One object, bare or under `data`.
fn one<T: serde::de::DeserializeOwned>(
    endpoint: &str,
    answer: serde_json::Value,
) -> Result<T, ApiError> {
    let object = match answer {
        serde_json::Value::Object(mut object)
            if object.get("data").is_some_and(|d| d.is_object()) =>
        {
            object.remove("data").unwrap_or_default()
        }
        other => other,
    };
    serde_json::from_value(object).map_err(|e| ApiError::Malformed(format!("{endpoint}: {e}")))
}

fn any_id<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    any_optional_id(deserializer)?.ok_or_else(|| serde::de::Error::custom("id is missing"))
}

fn any_optional_id<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    Ok(match serde_json::Value::deserialize(deserializer)? {
        serde_json::Value::String(text) => Some(text),
        serde_json::Value::Number(number) => Some(number.to_string()),
        serde_json::Value::Null => None,
        other => return Err(serde::de::Error::custom(format!("not an id: {other}"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliveries_are_read_with_numeric_or_string_ids() {
        let list: Vec<Delivery> = serde_json::from_str(
            r#"[{"id":7,"event_id":"evt_1","event_type":"referral.created","status":"failed",
                 "attempts":11,"last_error":"timeout","response_code":503,
                 "payload":{"event_type":"referral.created"},"created_at":"2026-11-30T09:00:00Z",
                 "delivered_at":null,"object_changes":{}},
                {"id":"8","event_id":null,"status":"delivered"}]"#,
        )
        .unwrap();
        assert_eq!(list[0].id, "7");
        assert_eq!(list[0].response_code, Some(503));
        assert!(list[0].is_undelivered());
        assert!(list[0].created().is_some());
        assert_eq!(list[1].id, "8");
        assert_eq!(list[1].event_id, None);
        assert!(!list[1].is_undelivered());
    }
}
