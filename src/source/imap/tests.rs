//! IMAP details checked without a server: dates, UID sets, folder names,
//! the crate's refusals read back, the SASL exchange.

use std::time::Duration;

use async_imap::Authenticator;
use secrecy::SecretString;

use super::errors::{ImapError, crate_error, crate_refusal};
use super::login::Sasl;
use super::session::{internal_date, mailbox_name, search_date};
use super::uid_set;
use crate::auth::sasl;
use crate::scrub::Scrubber;

#[test]
fn search_dates_are_rfc3501() {
    let t = std::time::UNIX_EPOCH + Duration::from_secs(1_796_529_835);
    assert_eq!(search_date(t), "6-Dec-2026");
    assert_eq!(search_date(std::time::UNIX_EPOCH), "1-Jan-1970");
}

#[test]
fn internal_dates_are_read_with_their_zone() {
    assert_eq!(
        internal_date(" 6-Dec-2026 05:03:55 +0100"),
        Some(1_796_529_835)
    );
    assert_eq!(
        internal_date("06-Dec-2026 04:03:55 +0000"),
        Some(1_796_529_835)
    );
    assert_eq!(internal_date("yesterday"), None);
}

#[test]
fn uid_sets_are_compact() {
    assert_eq!(uid_set(&[1, 2, 3, 7, 9, 10]), "1:3,7,9:10");
    assert_eq!(uid_set(&[5]), "5");
    assert_eq!(uid_set(&[]), "");
}

#[test]
fn folder_names_are_modified_utf7() {
    assert_eq!(mailbox_name("INBOX"), "INBOX");
    assert_eq!(mailbox_name("Tom & Jerry"), "Tom &- Jerry");
    assert_eq!(
        mailbox_name("Erledigt/Bearbeitet-äöü"),
        "Erledigt/Bearbeitet-&AOQA9gD8-"
    );
    assert_eq!(
        mailbox_name("Отправленные"),
        "&BB4EQgQ,BEAEMAQyBDsENQQ9BD0ESwQ1-"
    );
    assert_eq!(mailbox_name("台北"), "&U,BTFw-");
    // Outside the BMP: a surrogate pair in one run.
    assert_eq!(mailbox_name("a😀b"), "a&2D3eAA-b");
}

#[test]
fn the_crates_refusals_are_read_back_for_people() {
    let scrub = Scrubber::new(["0123456789abcdefghij-token"]);
    let no = async_imap::error::Error::No(
        "code: None, info: Some(\"[LIMIT] Maximum number of \\\"connections\\\"\\u{1b}\")".into(),
    );
    let r = crate_refusal(&scrub, &no).expect("a refusal");
    assert_eq!(r.code.as_deref(), Some("LIMIT"));
    assert_eq!(r.text, "Maximum number of \"connections\"?");
    assert!(matches!(
        crate_error(&scrub, "SELECT", no),
        ImapError::Busy { step: "SELECT", .. }
    ));
    let bad = async_imap::error::Error::Bad(
        "code: Some(TryCreate), info: Some(\"no 0123456789abcdefgh here\")".into(),
    );
    let select = async_imap::error::Error::No(
        "outcome: Outcome { code: None, information: Some(\"Mailbox is locked\") }".into(),
    );
    let r = crate_refusal(&scrub, &select).expect("a refusal");
    assert_eq!((r.code, r.text.as_str()), (None, "Mailbox is locked"));
    let r = crate_refusal(&scrub, &bad).expect("a refusal");
    assert_eq!(r.code.as_deref(), Some("TRYCREATE"));
    assert_eq!(r.text, "no [redacted] here");
    let shown = crate_error(&scrub, "UID COPY", bad).to_string();
    assert_eq!(
        shown,
        "the IMAP server refused UID COPY: \"[TRYCREATE] no [redacted] here\""
    );
}

#[test]
fn xoauth2_first_response_then_empty() {
    let token = SecretString::from("tok");
    let mut auth = Sasl::new(sasl::xoauth2(
        "u@x",
        secrecy::ExposeSecret::expose_secret(&token),
    ));
    assert_eq!(auth.process(b""), b"user=u@x\x01auth=Bearer tok\x01\x01");
    assert_eq!(auth.process(b"{\"status\":\"401\"}"), b"");
}
