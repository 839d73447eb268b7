//! Graph's JSON as the client reads it (only the fields it uses), and the
//! URL pieces it writes: path segments and OData query options.

use serde::Deserialize;

/// A page of a collection: `value` plus the OData links.
#[derive(Debug, Deserialize)]
pub(super) struct Page<T> {
    #[serde(default = "Vec::new")]
    pub(super) value: Vec<T>,
    #[serde(rename = "@odata.nextLink")]
    pub(super) next_link: Option<String>,
    #[serde(rename = "@odata.deltaLink")]
    pub(super) delta_link: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct FolderJson {
    pub(super) id: String,
    #[serde(rename = "displayName", default)]
    pub(super) display_name: String,
    #[serde(rename = "totalItemCount", default)]
    pub(super) total_item_count: u64,
    #[serde(rename = "unreadItemCount", default)]
    pub(super) unread_item_count: u64,
}

/// One entry of a delta page: a message, or `@removed` with its id.
#[derive(Debug, Deserialize)]
pub(super) struct DeltaJson {
    pub(super) id: String,
    #[serde(rename = "@removed")]
    pub(super) removed: Option<serde_json::Value>,
    #[serde(rename = "internetMessageId")]
    pub(super) internet_message_id: Option<String>,
    #[serde(rename = "receivedDateTime")]
    pub(super) received: Option<String>,
    #[serde(rename = "isRead")]
    pub(super) is_read: Option<bool>,
}

/// Percent-encodes a query value the way OData wants it: unreserved
/// characters and `$` as they are, a space as `%20` (never `+`, which
/// Graph may take literally inside `$filter`).
pub(super) fn query_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'$' | b',' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// An OData string literal: `'…'` with `'` doubled.
pub(super) fn odata_string(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_values_are_quoted_and_encoded() {
        let filter = format!("displayName eq {}", odata_string("Bob's & Co"));
        assert_eq!(filter, "displayName eq 'Bob''s & Co'");
        assert_eq!(
            query_value(&filter),
            "displayName%20eq%20%27Bob%27%27s%20%26%20Co%27"
        );
        assert_eq!(query_value("id,isRead"), "id,isRead");
    }

    #[test]
    fn delta_entries_parse_both_shapes() {
        let page: Page<DeltaJson> = serde_json::from_str(
            r#"{"value":[
                {"id":"A","internetMessageId":"<a@x>","receivedDateTime":"2026-01-01T00:00:00Z","isRead":false},
                {"id":"B","@removed":{"reason":"deleted"}}],
               "@odata.deltaLink":"https://g/d?$deltatoken=1"}"#,
        )
        .expect("page");
        assert_eq!(page.value.len(), 2);
        assert!(page.value[0].removed.is_none());
        assert_eq!(page.value[0].is_read, Some(false));
        assert!(page.value[1].removed.is_some());
        assert_eq!(
            page.delta_link.as_deref(),
            Some("https://g/d?$deltatoken=1")
        );
        assert!(page.next_link.is_none());
    }
}
