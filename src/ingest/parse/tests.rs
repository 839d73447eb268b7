//! Parsing whole mails: headers, bodies, attachments, reports, the
//! limits and the quarantine of what makes the parser panic.

use super::limits::{MAX_HEADER_VALUE, MAX_HEADERS};
use super::*;
use crate::ingest::thread::MAX_REFERENCED;

#[test]
fn plain_mail_keeps_headers_and_body() {
    let raw =
        b"From: Ann Example <ann@example.net>\r\nTo: help@contoso.com, Bob <bob@contoso.com>\r\n\
Cc: carl@example.net\r\nSubject: Printer on fire\r\nDate: Tue, 24 Nov 2026 10:00:00 +0000\r\n\
Message-ID: <abc@example.net>\r\nIn-Reply-To: <parent@example.net>\r\n\
References: <root@example.net> <parent@example.net>\r\n\r\nIt is burning.\r\n";
    let mail = parse(raw);
    assert_eq!(mail.subject, "Printer on fire");
    assert_eq!(mail.from_addr.as_deref(), Some("ann@example.net"));
    assert_eq!(mail.from_name.as_deref(), Some("Ann Example"));
    assert_eq!(
        mail.to.as_deref(),
        Some("help@contoso.com, Bob <bob@contoso.com>")
    );
    assert_eq!(mail.cc.as_deref(), Some("carl@example.net"));
    assert_eq!(mail.message_id.as_deref(), Some("abc@example.net"));
    assert_eq!(mail.dedup_key, "abc@example.net");
    assert_eq!(mail.in_reply_to.as_deref(), Some("parent@example.net"));
    assert_eq!(
        mail.references.as_deref(),
        Some("root@example.net parent@example.net")
    );
    assert_eq!(mail.sent_at.as_deref(), Some("2026-11-24T10:00:00Z"));
    assert!(mail.body_text.contains("It is burning."));
    assert!(mail.body_html.is_none());
    assert!(mail.parse_note.is_none());
}

#[test]
fn html_only_mail_gets_readable_text() {
    let raw =
        b"From: a@example.net\r\nSubject: html\r\nContent-Type: text/html; charset=utf-8\r\n\r\n\
<html><body><p>Hello <b>world</b></p><script>x()</script></body></html>\r\n";
    let mail = parse(raw);
    assert!(mail.body_text.contains("Hello"), "{:?}", mail.body_text);
    assert!(mail.body_text.contains("world"));
    assert!(!mail.body_text.contains("<b>"));
    assert!(
        mail.body_html
            .as_deref()
            .is_some_and(|h| h.contains("<b>world</b>"))
    );
}

#[test]
fn attachments_are_kept() {
    let raw = b"From: a@example.net\r\nSubject: files\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\nContent-Type: text/plain\r\n\r\nsee file\r\n\
--XX\r\nContent-Type: application/pdf; name=\"r.pdf\"\r\nContent-Disposition: attachment; filename=\"r.pdf\"\r\n\
Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--XX--\r\n";
    let mail = parse(raw);
    assert_eq!(mail.attachments.len(), 1);
    let a = &mail.attachments[0];
    assert_eq!(a.filename.as_deref(), Some("r.pdf"));
    assert_eq!(a.content_type, "application/pdf");
    assert_eq!(a.content.as_deref(), Some(&b"%PDF-1.4\n"[..]));
    assert_eq!(a.size, 9);
    assert!(!a.inline);
    assert!(mail.body_text.contains("see file"));
}

#[test]
fn garbage_still_becomes_a_mail_keyed_by_content() {
    for raw in [
        &b""[..],
        b"\x00\xff\xfe garbage",
        b"no headers at all\r\n\r\n",
    ] {
        let mail = parse(raw);
        assert!(mail.dedup_key.starts_with("sha256:"), "{raw:?}");
        assert!(!mail.subject.is_empty());
    }
    let mail = parse(b"\x00\xff\xfe garbage");
    assert!(mail.parse_note.is_some());
    assert!(mail.body_text.contains("garbage"));
    assert_ne!(parse(b"one").dedup_key, parse(b"two").dedup_key);
}

#[test]
fn broken_mime_keeps_what_is_readable() {
    let raw = b"From: x@example.net\r\nSubject: =?utf-8?B?broken\r\nContent-Type: multipart/mixed; boundary=\"B\"\r\n\r\n\
--B\r\nContent-Type: text/plain; charset=nonsense\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!not base64\xff\r\n";
    let mail = parse(raw);
    assert_eq!(mail.from_addr.as_deref(), Some("x@example.net"));
    assert!(!mail.subject.is_empty());
}

const WITH_FILES: &[u8] = b"From: a@example.net\r\nSubject: files\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/related; boundary=XX\r\n\r\n--XX\r\nContent-Type: text/html\r\n\r\n<img src=\"cid:logo@x\">\r\n\
--XX\r\nContent-Type: image/png\r\nContent-ID: <logo@x>\r\nContent-Transfer-Encoding: base64\r\n\r\niVBORw0KGgo=\r\n\
--XX\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"..\\\\..\\\\evil\x07.exe\"\r\n\r\n\
0123456789012345678901234567890123456789\r\n--XX--\r\n";

#[test]
fn attachments_carry_metadata_and_safe_names() {
    let mail = parse(WITH_FILES);
    assert_eq!(mail.attachments.len(), 2, "{:?}", mail.attachments);
    let logo = &mail.attachments[0];
    assert_eq!(logo.content_id.as_deref(), Some("logo@x"));
    assert!(logo.inline);
    assert_eq!(logo.content.as_deref(), Some(&b"\x89PNG\r\n\x1a\n"[..]));
    assert_eq!(
        logo.sha256,
        format!("{:x}", Sha256::digest(b"\x89PNG\r\n\x1a\n"))
    );
    let exe = &mail.attachments[1];
    assert_eq!(exe.filename.as_deref(), Some("evil_.exe"));
    assert!(!exe.inline);
    assert!(mail.limit_note.is_none());
    assert!(mail.raw.is_none());
}

#[test]
fn limits_drop_contents_but_keep_the_mail() {
    let limits = Limits {
        max_email_size: 1 << 20,
        max_attachment_size: 20,
        keep_raw: true,
    };
    let mail = parse_with(WITH_FILES, &limits);
    let exe = &mail.attachments[1];
    assert!(exe.content.is_none());
    assert_eq!(exe.size, 40);
    assert_eq!(
        exe.dropped.as_deref(),
        Some("larger than max_attachment_size (20 B)")
    );
    assert!(mail.attachments[0].content.is_some(), "the small one stays");
    let note = mail.limit_note.as_deref().unwrap_or_default();
    assert!(
        note.contains("\"evil_.exe\"") && note.contains("40 B"),
        "{note}"
    );
    let kept = mail.raw.as_ref().expect("kept");
    assert_eq!(kept.content, WITH_FILES);
    assert_eq!(kept.sha256, format!("{:x}", Sha256::digest(WITH_FILES)));

    let tiny = Limits {
        max_email_size: 100,
        ..limits
    };
    let mail = parse_with(WITH_FILES, &tiny);
    assert!(
        mail.attachments
            .iter()
            .all(|a| a.content.is_none() && a.dropped.is_some())
    );
    let note = mail.limit_note.as_deref().unwrap_or_default();
    assert!(
        note.contains("larger than max_email_size (100 B)"),
        "{note}"
    );
    assert!(note.contains("its 2 attachments were not stored"), "{note}");
}

#[test]
fn filenames_are_made_safe() {
    assert_eq!(
        sanitize_filename("../../etc/passwd").as_deref(),
        Some("passwd")
    );
    assert_eq!(
        sanitize_filename("C:\\Users\\x\\a.txt").as_deref(),
        Some("a.txt")
    );
    assert_eq!(
        sanitize_filename("a\r\nb?.pdf").as_deref(),
        Some("a__b_.pdf")
    );
    assert_eq!(sanitize_filename("con.txt").as_deref(), Some("_con.txt"));
    assert_eq!(sanitize_filename(".."), None);
    assert_eq!(sanitize_filename("   "), None);
    let long = format!("{}.docx", "x".repeat(300));
    let short = sanitize_filename(&long).unwrap_or_default();
    assert_eq!(short.len(), 200);
    assert!(short.ends_with(".docx"));
}

#[test]
fn deliveries_of_one_mail_share_a_content_key() {
    let a = parse(b"Received: from a\r\nFrom: x@example.net\r\nSubject: s\r\nDate: Tue, 24 Nov 2026 10:00:00 +0000\r\n\r\nbody\r\n");
    let b = parse(b"Received: from b\r\nDelivered-To: other@contoso.com\r\nFrom: x@example.net\r\nSubject: s\r\nDate: Tue, 24 Nov 2026 10:00:00 +0000\r\n\r\nbody\r\n");
    let c = parse(b"From: x@example.net\r\nSubject: s\r\nDate: Tue, 24 Nov 2026 10:00:00 +0000\r\n\r\nanother body\r\n");
    assert!(a.dedup_key.starts_with("sha256:"));
    assert_eq!(a.dedup_key, b.dedup_key);
    assert_ne!(a.dedup_key, c.dedup_key);
}

#[test]
fn reports_name_the_mail_they_are_about() {
    let raw = b"From: MAILER-DAEMON@mx.example.net\r\nSubject: Undelivered Mail\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/report; report-type=delivery-status; boundary=B\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nsorry\r\n\
--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.net\r\n\r\nFinal-Recipient: rfc822; x@y\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n\
--B\r\nContent-Type: text/rfc822-headers\r\n\r\nFrom: help@contoso.com\r\nMessage-ID: <m2t.abc@contoso.com>\r\nSubject: [#1] s\r\n\r\n--B--\r\n";
    let mail = parse(raw);
    assert_eq!(mail.mime_type, "multipart/report");
    let report = mail.report.clone().expect("a report");
    assert_eq!(report.report_type, "delivery-status");
    assert_eq!(report.original_ids, ["m2t.abc@contoso.com"]);
    assert_eq!(
        mail.header_values("from").next(),
        Some("MAILER-DAEMON@mx.example.net")
    );
}

#[test]
fn charsets_decode_to_utf8() {
    // "Grüße" in UTF-7, Shift_JIS "日本語", Windows-1252 "€uro", ISO-8859-2 "Łódź".
    let mail = parse(b"From: a@example.net\r\nSubject: =?UTF-7?Q?Gr+APwA3w-e?=\r\n\r\nx\r\n");
    assert_eq!(mail.subject, "Grüße");
    let mail = parse(b"From: a@example.net\r\nSubject: =?Shift_JIS?B?k/qWe4zq?=\r\nContent-Type: text/plain; charset=Shift_JIS\r\n\r\n\x93\xfa\x96\x7b\x8c\xea\r\n");
    assert_eq!(mail.subject, "日本語");
    assert!(mail.body_text.contains("日本語"), "{}", mail.body_text);
    let mail = parse(b"From: a@example.net\r\nSubject: s\r\nContent-Type: text/plain; charset=windows-1252\r\n\r\n\x80uro\r\n");
    assert!(mail.body_text.contains("€uro"), "{}", mail.body_text);
    let mail = parse(b"From: a@example.net\r\nSubject: =?ISO-8859-2?Q?=A3=F3d=BC?=\r\n\r\nx\r\n");
    assert_eq!(mail.subject, "Łódź");
}

#[test]
fn a_boundary_that_never_appears_leaves_the_text_readable() {
    let raw = b"From: a@example.net\r\nSubject: s\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"A\"\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nno space left on device\r\n--B--\r\n";
    let mail = parse(raw);
    assert!(
        mail.body_text.contains("no space left on device"),
        "{mail:?}"
    );
    assert!(mail.attachments.is_empty(), "{:?}", mail.attachments);
    assert!(
        mail.parse_note
            .as_deref()
            .is_some_and(|n| n.contains("boundary"))
    );
}

use super::super::mime::nested_messages;

/// The cut the note states, and the opaque rest.
fn assert_cut_at_the_limit(mail: &ParsedMail, raw: &[u8]) {
    let note = mail.parse_note.as_deref().unwrap_or_default();
    assert!(
        note.contains("MIME nesting exceeded 100 levels at byte "),
        "{note}"
    );
    let at: usize = note
        .split("at byte ")
        .nth(1)
        .and_then(|n| n.split(';').next())
        .and_then(|n| n.parse().ok())
        .expect("a byte offset");
    assert!(
        note.contains(&format!(
            "the remaining {} bytes are kept as one attachment",
            raw.len() - at
        )),
        "{note}"
    );
    let rest = mail.attachments.last().expect("the rest");
    assert_eq!(rest.content_type, "application/octet-stream");
    assert_eq!(rest.content.as_deref(), Some(&raw[at..]));
    assert_eq!(rest.size, raw.len() - at);
    assert!(mail.quarantine.is_none());
}

#[test]
fn forty_thousand_nested_messages_are_cut_at_the_limit() {
    // Parsed on the test thread's ordinary stack: only a real cut keeps
    // the drop of the parsed tree from overflowing it.
    let raw = nested_messages(40_000);
    let mail = parse(&raw);
    assert_eq!(mail.subject, "deep");
    assert_eq!(mail.message_id.as_deref(), Some("deep@x"));
    assert_cut_at_the_limit(&mail, &raw);
    let shallow = parse(&nested_messages(50));
    assert!(shallow.parse_note.is_none(), "{:?}", shallow.parse_note);
}

#[test]
fn a_hundred_thousand_nested_multiparts_are_cut_at_the_limit() {
    let levels = 100_000;
    let mut raw = b"From: a@example.net\r\nSubject: deep\r\n".to_vec();
    for i in 0..levels {
        raw.extend_from_slice(
            format!("Content-Type: multipart/mixed; boundary=\"b{i}\"\r\n\r\n--b{i}\r\n")
                .as_bytes(),
        );
    }
    raw.extend_from_slice(b"Content-Type: text/plain\r\n\r\ninnermost\r\n");
    for i in (0..levels).rev() {
        raw.extend_from_slice(format!("--b{i}--\r\n").as_bytes());
    }
    let mail = parse(&raw);
    assert_eq!(mail.subject, "deep");
    assert_cut_at_the_limit(&mail, &raw);
}

#[test]
fn a_report_about_thirty_three_thousand_mails_names_the_first_fifty() {
    let mut raw = b"From: MAILER-DAEMON@mx.example.net\r\nSubject: Undelivered\r\n\
Content-Type: multipart/report; report-type=delivery-status; boundary=B\r\n\r\n"
        .to_vec();
    for i in 0..33_000 {
        // Every id twice: repeats are dropped, not counted.
        raw.extend_from_slice(
            format!(
                "--B\r\nContent-Type: text/rfc822-headers\r\n\r\nMessage-ID: <m{}@x>\r\n\r\n",
                i / 2
            )
            .as_bytes(),
        );
    }
    raw.extend_from_slice(b"--B--\r\n");
    let report = parse(&raw).report.expect("a report");
    let want: Vec<String> = (0..MAX_REFERENCED).map(|i| format!("m{i}@x")).collect();
    assert_eq!(report.original_ids, want);
}

#[test]
fn a_three_mib_subject_is_cut_and_noted() {
    let subject = format!("{}Fwd: x", "Re: ".repeat((3 << 20) / 4));
    let raw = format!("From: a@example.net\r\nSubject: {subject}\r\n\r\nbody\r\n");
    let mail = parse(raw.as_bytes());
    assert_eq!(mail.subject.len(), MAX_SUBJECT);
    assert!(mail.subject.starts_with("Re: Re: "));
    let note = mail.parse_note.as_deref().unwrap_or_default();
    assert!(
        note.contains("the Subject (3.0 MiB) was cut to 4.0 KiB"),
        "{note}"
    );
    assert!(!crate::ingest::thread::is_forward(&mail.subject));
    let cut_in_a_char = format!(
        "Subject: {}é\r\nFrom: a@x\r\n\r\nb",
        "x".repeat(MAX_SUBJECT - 1)
    );
    assert_eq!(
        parse(cut_in_a_char.as_bytes()).subject.len(),
        MAX_SUBJECT - 1
    );
}

#[test]
fn headers_and_address_lists_are_bounded() {
    let mut raw = String::from("From: a@example.net\r\nSubject: s\r\n");
    let to: Vec<String> = (0..10_000)
        .map(|i| format!("user{i}@example.net"))
        .collect();
    raw.push_str(&format!(
        "To: {}\r\nCc: {}\r\n",
        to.join(", "),
        to.join(", ")
    ));
    raw.push_str(&format!("X-Big: {}\r\n", "y".repeat(100_000)));
    for i in 0..1_500 {
        raw.push_str(&format!("X-Many: {i}\r\n"));
    }
    raw.push_str("\r\nbody\r\n");
    let mail = parse(raw.as_bytes());
    assert_eq!(mail.headers.len(), MAX_HEADERS);
    assert_eq!(
        mail.headers[0],
        ("From".to_string(), "a@example.net".to_string())
    );
    let big = mail.header_values("X-Big").next().unwrap_or_default();
    assert_eq!(big.len(), MAX_HEADER_VALUE);
    assert!(
        mail.to
            .as_deref()
            .is_some_and(|t| t.len() <= MAX_ADDRESS_LIST && t.starts_with("user0@"))
    );
    assert!(
        mail.cc
            .as_deref()
            .is_some_and(|t| t.len() <= MAX_ADDRESS_LIST)
    );
    let note = mail.parse_note.as_deref().unwrap_or_default();
    for part in [
        "only the first 1000 of its 1505 headers are kept",
        "3 header value(s) were cut to 64.0 KiB",
        "the To list",
        "the Cc list",
    ] {
        assert!(note.contains(part), "{part} in {note}");
    }
}

#[test]
fn raw_eight_bit_headers_are_decoded() {
    // Latin-1 "Grüße aus Köln" with no RFC 2047, the body in ISO-8859-1.
    let raw = b"From: J\xfcrgen M\xfcller <jm@example.net>\r\nSubject: Gr\xfc\xdfe aus K\xf6ln\r\n\
Content-Type: text/plain; charset=iso-8859-1\r\n\r\nK\xf6ln\r\n";
    let mail = parse(raw);
    assert_eq!(mail.subject, "Grüße aus Köln");
    assert_eq!(mail.from_name.as_deref(), Some("Jürgen Müller"));
    assert_eq!(mail.from_addr.as_deref(), Some("jm@example.net"));
    let note = mail.parse_note.as_deref().unwrap_or_default();
    assert!(
        note.contains("the Subject was raw 8-bit text; decoded as iso-8859-1"),
        "{note}"
    );
    // Nothing declared: windows-1252 ("€" is 0x80 there).
    let mail = parse(
        b"From: a@example.net\r\nSubject: 100 \x80 f\xfcr =?utf-8?q?caf=C3=A9?=\r\n\r\nx\r\n",
    );
    assert_eq!(mail.subject, "100 € für café");
    assert!(
        mail.parse_note
            .as_deref()
            .is_some_and(|n| n.contains("decoded as windows-1252"))
    );
    // Valid UTF-8 is left alone, without a note.
    let mail = parse("From: a@example.net\r\nSubject: Grüße\r\n\r\nx\r\n".as_bytes());
    assert_eq!(mail.subject, "Grüße");
    assert!(mail.parse_note.is_none());
}

#[test]
fn a_boundary_in_mid_line_is_noted() {
    let raw = b"From: a@example.net\r\nSubject: s\r\nContent-Type: multipart/mixed; boundary=\"XY\"\r\n\r\n\
--XY\r\nContent-Type: text/plain\r\n\r\nthe log says --XY and then more\r\nsecond line\r\n--XY--\r\n";
    let mail = parse(raw);
    let at = raw.windows(4).rposition(|w| w == b" --X").expect("there") + 1;
    let note = mail.parse_note.as_deref().unwrap_or_default();
    assert!(
        note.contains(&format!(
            "a MIME boundary appears in the middle of a line at byte {at}"
        )),
        "{note}"
    );
    // What the body lost is in the raw mail, kept whatever keep_raw says.
    let kept = mail.raw.as_ref().expect("the raw mail is kept");
    assert_eq!(kept.content, raw);
    assert!(
        !mail.body_text.contains("and then more"),
        "{}",
        mail.body_text
    );
    let plain = parse(
            b"From: a@example.net\r\nSubject: s\r\nContent-Type: multipart/mixed; boundary=\"XY\"\r\n\r\n\
--XY\r\nContent-Type: text/plain\r\n\r\nno boundary in here\r\n--XY--\r\n",
        );
    assert!(plain.raw.is_none() && plain.parse_note.is_none());
}

#[test]
fn digest_parts_are_messages() {
    let raw = b"From: a@example.net\r\nSubject: digest\r\nContent-Type: multipart/digest; boundary=D\r\n\r\n\
--D\r\n\r\nFrom: b@example.net\r\nSubject: one\r\n\r\nfirst\r\n--D\r\n\r\nFrom: c@example.net\r\nSubject: two\r\n\r\nsecond\r\n--D--\r\n";
    let mail = parse(raw);
    let kinds: Vec<&str> = mail
        .attachments
        .iter()
        .map(|a| a.content_type.as_str())
        .collect();
    assert_eq!(
        kinds,
        ["message/rfc822", "message/rfc822"],
        "{:?}",
        mail.attachments
    );
    let first = mail.attachments[0].content.as_deref().unwrap_or_default();
    assert!(String::from_utf8_lossy(first).contains("Subject: one"));
}

#[test]
fn empty_nameless_parts_are_dropped() {
    let raw = b"From: a@example.net\r\nSubject: s\r\nContent-Type: multipart/mixed; boundary=E\r\n\r\n\
--E\r\nContent-Type: text/plain\r\n\r\nhello\r\n--E\r\nContent-Type: application/octet-stream\r\n\r\n\r\n\
--E\r\nContent-Type: application/pdf; name=\"empty.pdf\"\r\n\r\n\r\n--E--\r\n";
    let mail = parse(raw);
    let names: Vec<Option<&str>> = mail
        .attachments
        .iter()
        .map(|a| a.filename.as_deref())
        .collect();
    assert_eq!(names, [Some("empty.pdf")], "a named empty file stays");
    assert!(mail.body_text.contains("hello"));
    assert!(
        mail.parse_note
            .as_deref()
            .is_some_and(|n| n.contains("an empty part without a name was dropped"))
    );
}

#[test]
fn the_only_text_becomes_the_body() {
    let raw = b"From: a@example.net\r\nSubject: s\r\nContent-Type: multipart/mixed; boundary=T\r\n\r\n\
--T\r\nContent-Type: text/plain\r\nContent-Disposition: attachment\r\n\r\nthe printer is on fire\r\n\
--T\r\nContent-Type: application/pdf; name=\"r.pdf\"\r\nContent-Disposition: attachment; filename=\"r.pdf\"\r\n\r\n%PDF\r\n--T--\r\n";
    let mail = parse(raw);
    assert!(
        mail.body_text.contains("the printer is on fire"),
        "{:?}",
        mail.body_text
    );
    let names: Vec<Option<&str>> = mail
        .attachments
        .iter()
        .map(|a| a.filename.as_deref())
        .collect();
    assert_eq!(names, [Some("r.pdf")]);
    assert!(
        mail.parse_note
            .as_deref()
            .is_some_and(|n| n.contains("unnamed text/plain part(s)"))
    );
}

#[test]
fn from_addr_is_one_address() {
    let mail = parse(b"From: ann@example.net, bob@example.net\r\nSubject: s\r\n\r\nx\r\n");
    assert_eq!(mail.from_addr.as_deref(), Some("ann@example.net"));
    assert!(mail.parse_note.as_deref().is_some_and(|n| {
        n.contains("the From header names 2 addresses; the first (ann@example.net)")
    }));
    for from in [
        "Ann ann@example.net",
        "ann@example.net bob@example.net",
        "\"Ann\" <ann@example.net> <bob@example.net>",
        "<ann@example.net>, Bob <bob@example.net>",
    ] {
        let mail = parse(format!("From: {from}\r\nSubject: s\r\n\r\nx\r\n").as_bytes());
        let addr = mail.from_addr.as_deref().unwrap_or("none");
        assert!(
            addr == "ann@example.net" || addr == "bob@example.net",
            "{from} gave {addr}"
        );
    }
    let mail = parse(b"From: Ann Example\r\nSubject: s\r\n\r\nx\r\n");
    assert_eq!(mail.from_addr, None);
}

#[test]
fn the_first_of_repeated_headers_wins() {
    let raw = b"From: first@example.net\r\nFrom: second@example.net\r\nSubject: first\r\nSubject: second\r\n\
Date: Tue, 24 Nov 2026 10:00:00 +0000\r\nDate: Wed, 25 Nov 2026 10:00:00 +0000\r\n\
Message-ID: <first@x>\r\nMessage-ID: <second@x>\r\n\r\nbody\r\n";
    let mail = parse(raw);
    assert_eq!(mail.subject, "first");
    assert_eq!(mail.from_addr.as_deref(), Some("first@example.net"));
    assert_eq!(mail.sent_at.as_deref(), Some("2026-11-24T10:00:00Z"));
    assert_eq!(mail.message_id.as_deref(), Some("first@x"));
    let note = mail.parse_note.as_deref().unwrap_or_default();
    assert!(
        note.contains("the mail has 2 Subject headers; the first is used"),
        "{note}"
    );
    assert!(
        note.contains("the mail has 2 From headers; the first is used"),
        "{note}"
    );
}

#[test]
fn a_parser_panic_quarantines_the_mail_with_its_raw_bytes() {
    let raw = b"From: a@example.net\r\nSubject: s\r\n\r\nbody\r\n";
    let limits = Limits {
        keep_raw: false,
        ..Limits::default()
    };
    let mail = parse_using(raw, raw.len() as u64, &limits, |_| panic!("a parser bug"));
    assert_eq!(mail.quarantine.as_deref(), Some("the MIME parser panicked"));
    assert_eq!(
        mail.raw.as_ref().map(|r| r.content.as_slice()),
        Some(&raw[..])
    );
    assert!(mail.body_text.contains("body"));
    assert!(mail.dedup_key.starts_with("sha256:"));
    // The ordinary path neither quarantines nor keeps the raw mail.
    let mail = parse_with(raw, &limits);
    assert!(mail.quarantine.is_none() && mail.raw.is_none());
    // No recognised header is a note, not a quarantine.
    let mail = parse_with(b"\x00\xff\xfe garbage", &limits);
    assert!(mail.quarantine.is_none() && mail.parse_note.is_some());
}

#[test]
fn boundaries_that_never_appear_are_not_hunted_for_again_and_again() {
    // mail-parser alone looks for each boundary to the end of the mail:
    // 25 s for this 1.8 MiB mail in a release build.
    let mut raw = b"From: a@example.net\r\nSubject: s\r\n\
Content-Type: multipart/mixed; boundary=A\r\n\r\n--A\r\n"
        .to_vec();
    for i in 0..30_000 {
        raw.extend_from_slice(
            format!("Content-Type: multipart/mixed; boundary=never{i}\r\n\r\nx\r\n--A\r\n")
                .as_bytes(),
        );
    }
    raw.extend_from_slice(b"--A--\r\n");
    let mail = parse(&raw);
    let note = mail.parse_note.as_deref().unwrap_or_default();
    assert!(
        note.contains("finding its MIME parts would take too many passes over the mail at byte"),
        "{note}"
    );
    let rest = mail.attachments.last().expect("the rest");
    assert_eq!(rest.content_type, "application/octet-stream");
    assert!(rest.size > raw.len() / 2, "{}", rest.size);
    assert!(raw.ends_with(rest.content.as_deref().unwrap_or_default()));
}
