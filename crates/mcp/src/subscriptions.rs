//! `subscriptions/listen` (2026-07-28): the notification filter a client asks for, and which
//! server notifications it admits.
//!
//! A listen request names the change notifications it wants in `params.notifications`; the
//! server acknowledges the subset it agreed to honor with
//! `notifications/subscriptions/acknowledged` as the stream's first message, and tags every
//! notification of the stream with the listen request's id in
//! `params._meta["io.modelcontextprotocol/subscriptionId"]` (on stdio, where every stream shares
//! one pipe, that tag is the only way to tell them apart). A server must not send a type the
//! client did not ask for: [`NotificationFilter::admits`] is that rule, for an intermediary that
//! wants to hold the server to it.

use serde_json::Value;

/// The listen method.
pub const LISTEN_METHOD: &str = "subscriptions/listen";
/// The first message of every listen stream.
pub const ACKNOWLEDGED: &str = "notifications/subscriptions/acknowledged";
/// `_meta` key tying a notification to the listen request (its JSON-RPC id) that asked for it.
pub const META_SUBSCRIPTION_ID: &str = "io.modelcontextprotocol/subscriptionId";

/// What a listen stream asked for (or a server acknowledged): `params.notifications`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NotificationFilter {
    /// `toolsListChanged`: `notifications/tools/list_changed`.
    pub tools_list_changed: bool,
    /// `promptsListChanged`: `notifications/prompts/list_changed`.
    pub prompts_list_changed: bool,
    /// `resourcesListChanged`: `notifications/resources/list_changed`.
    pub resources_list_changed: bool,
    /// `resourceSubscriptions`: `notifications/resources/updated` for these URIs.
    pub resource_subscriptions: Vec<String>,
}

impl NotificationFilter {
    /// Reads a `notifications` object. Every field is optional; a missing or mistyped one
    /// subscribes to nothing (omitting a field is not subscribing, says the spec).
    pub fn from_value(notifications: &Value) -> Self {
        let flag = |key: &str| {
            notifications
                .get(key)
                .and_then(Value::as_bool)
                .unwrap_or(false)
        };
        NotificationFilter {
            tools_list_changed: flag("toolsListChanged"),
            prompts_list_changed: flag("promptsListChanged"),
            resources_list_changed: flag("resourcesListChanged"),
            resource_subscriptions: notifications
                .get("resourceSubscriptions")
                .and_then(Value::as_array)
                .map(|uris| {
                    uris.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// The filter of a `subscriptions/listen` request's params.
    pub fn of_listen(params: Option<&Value>) -> Self {
        params
            .and_then(|p| p.get("notifications"))
            .map(Self::from_value)
            .unwrap_or_default()
    }

    /// What both filters admit (what was asked for and acknowledged).
    pub fn intersect(&self, other: &Self) -> Self {
        NotificationFilter {
            tools_list_changed: self.tools_list_changed && other.tools_list_changed,
            prompts_list_changed: self.prompts_list_changed && other.prompts_list_changed,
            resources_list_changed: self.resources_list_changed && other.resources_list_changed,
            resource_subscriptions: self
                .resource_subscriptions
                .iter()
                .filter(|uri| other.resource_subscriptions.contains(uri))
                .cloned()
                .collect(),
        }
    }

    /// Whether a stream with this filter may carry the notification `method` (`params` for the
    /// URI of `notifications/resources/updated`). `None` when `method` is not one of the change
    /// notifications a filter speaks about.
    pub fn admits(&self, method: &str, params: Option<&Value>) -> Option<bool> {
        Some(match method {
            "notifications/tools/list_changed" => self.tools_list_changed,
            "notifications/prompts/list_changed" => self.prompts_list_changed,
            "notifications/resources/list_changed" => self.resources_list_changed,
            "notifications/resources/updated" => params
                .and_then(|p| p.get("uri"))
                .and_then(Value::as_str)
                .is_some_and(|uri| self.resource_subscriptions.iter().any(|u| u == uri)),
            _ => return None,
        })
    }
}

/// Whether `method` is a change notification, one that belongs on listen streams only.
pub fn is_change_notification(method: &str) -> bool {
    NotificationFilter::default().admits(method, None).is_some()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_filter_admits_exactly_the_types_it_names() {
        let filter = NotificationFilter::from_value(&json!({"promptsListChanged": true}));
        assert_eq!(
            filter.admits("notifications/prompts/list_changed", None),
            Some(true)
        );
        assert_eq!(
            filter.admits("notifications/tools/list_changed", None),
            Some(false)
        );
        assert_eq!(
            filter.admits("notifications/resources/list_changed", None),
            Some(false)
        );
        assert_eq!(filter.admits("notifications/message", None), None);
    }

    #[test]
    fn resource_updates_are_admitted_only_for_subscribed_uris() {
        let filter = NotificationFilter::of_listen(Some(&json!({
            "notifications": {"resourceSubscriptions": ["file:///a", 7]}
        })));
        let updated = |uri: &str| {
            filter.admits(
                "notifications/resources/updated",
                Some(&json!({"uri": uri})),
            )
        };
        assert_eq!(updated("file:///a"), Some(true));
        assert_eq!(updated("file:///b"), Some(false));
        assert_eq!(
            filter.admits("notifications/resources/updated", None),
            Some(false)
        );
    }

    #[test]
    fn missing_or_mistyped_fields_subscribe_to_nothing() {
        for value in [
            json!({}),
            json!({"toolsListChanged": "yes"}),
            json!(null),
            json!([]),
        ] {
            assert_eq!(
                NotificationFilter::from_value(&value),
                NotificationFilter::default(),
                "{value}"
            );
        }
        assert_eq!(
            NotificationFilter::of_listen(None),
            NotificationFilter::default()
        );
    }

    #[test]
    fn the_intersection_keeps_what_both_admit() {
        let asked = NotificationFilter::from_value(&json!({
            "toolsListChanged": true, "promptsListChanged": true,
            "resourceSubscriptions": ["a", "b"]}));
        let acknowledged = NotificationFilter::from_value(&json!({
            "toolsListChanged": true, "resourcesListChanged": true,
            "resourceSubscriptions": ["b", "c"]}));
        let both = asked.intersect(&acknowledged);
        assert!(both.tools_list_changed);
        assert!(!both.prompts_list_changed);
        assert!(!both.resources_list_changed);
        assert_eq!(both.resource_subscriptions, ["b"]);
    }

    #[test]
    fn change_notifications_are_told_apart_from_request_scoped_ones() {
        assert!(is_change_notification("notifications/tools/list_changed"));
        assert!(is_change_notification("notifications/resources/updated"));
        assert!(!is_change_notification("notifications/progress"));
        assert!(!is_change_notification("notifications/message"));
        assert!(!is_change_notification(ACKNOWLEDGED));
    }
}
