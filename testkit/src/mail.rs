//! Deterministic test mails (CRLF line endings, like on the wire).

use crate::time::rfc5322_date;

/// 2025-11-24 09:00:00 UTC; mail `i` is dated `i` minutes later.
const BASE_DATE: i64 = 1_763_974_800;

/// The helpdesk address every generated mail is sent to.
pub const HELPDESK: &str = "helpdesk@test.example";

fn fnv1a(i: usize) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in (i as u64).to_le_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Message-ID of [`mail`]`(i)` / [`mail_of_size`]`(i, _)`, with angle brackets.
pub fn message_id(i: usize) -> String {
    format!("<{i}.{:012x}@test.example>", fnv1a(i) & 0xffff_ffff_ffff)
}

/// Subject of [`mail`]`(i)`.
pub fn subject(i: usize) -> String {
    format!("Printer broken #{i}")
}

/// Sender address of [`mail`]`(i)`.
pub fn sender(i: usize) -> String {
    format!("customer{i}@example.net")
}

fn headers(i: usize, content_type: &str, transfer_encoding: &str) -> String {
    let date = rfc5322_date(BASE_DATE + 60 * i as i64);
    format!(
        "Return-Path: <customer{i}@example.net>\r\n\
         Received: from mail.example.net (mail.example.net [192.0.2.25])\r\n\
         \tby mx.test.example with ESMTPS id {i:08x}\r\n\
         \tfor <{HELPDESK}>; {date}\r\n\
         Message-ID: {mid}\r\n\
         Date: {date}\r\n\
         From: \"Customer {i}\" <customer{i}@example.net>\r\n\
         To: Helpdesk <{HELPDESK}>\r\n\
         Subject: Printer broken #{i}\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: {content_type}\r\n\
         Content-Transfer-Encoding: {transfer_encoding}\r\n\
         \r\n",
        mid = message_id(i),
    )
}

/// A realistic plain-text mail, unique per `i` (Message-ID, sender, subject).
pub fn mail(i: usize) -> Vec<u8> {
    let mut m = headers(i, "text/plain; charset=utf-8; format=flowed", "8bit");
    m.push_str(&format!(
        "Hello helpdesk,\r\n\
         \r\n\
         the printer on floor {floor} (asset PRN-{i:05}) shows \"paper jam\" again,\r\n\
         although there is no paper stuck in it. We already switched it off and\r\n\
         on. Could someone please have a look today?\r\n\
         \r\n\
         Thanks and best regards,\r\n\
         Customer {i}\r\n\
         \u{2014} sent from my phone\r\n",
        floor = i % 7 + 1
    ));
    m.into_bytes()
}

/// [`mail`]`(i)` without its Message-ID header: such a mail can only be
/// recognised again by its content.
pub fn mail_without_message_id(i: usize) -> Vec<u8> {
    let text = String::from_utf8(mail(i)).expect("mail() is UTF-8");
    let header = format!("Message-ID: {}\r\n", message_id(i));
    assert!(text.contains(&header));
    text.replacen(&header, "", 1).into_bytes()
}

const FILLER: &str = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.";

fn filler_lines(bytes: usize, html: bool) -> String {
    let mut out = String::with_capacity(bytes + 100);
    let mut n = 0;
    while out.len() < bytes {
        if html {
            out.push_str(&format!("<p>{n:05} {FILLER}</p>\r\n"));
        } else {
            out.push_str(&format!("{n:05} {FILLER}\r\n"));
        }
        n += 1;
    }
    out
}

/// Like [`mail`] but multipart/alternative (text + HTML) padded to about
/// `bytes` bytes in total (never less than the skeleton, ~1.3 KB).
pub fn mail_of_size(i: usize, bytes: usize) -> Vec<u8> {
    let boundary = format!("=_m2t_{:016x}", fnv1a(i));
    let head = headers(
        i,
        &format!("multipart/alternative; boundary=\"{boundary}\""),
        "7bit",
    );
    let text_intro =
        format!("Hello helpdesk,\r\n\r\nthe printer (asset PRN-{i:05}) is broken again.\r\n\r\n");
    let html_intro = format!(
        "<html><body><p>Hello helpdesk,</p><p>the printer (asset PRN-{i:05}) is broken again.</p>\r\n"
    );
    let skeleton = |text_pad: &str, html_pad: &str| {
        format!(
            "{head}This is a multi-part message in MIME format.\r\n\
             \r\n\
             --{boundary}\r\n\
             Content-Type: text/plain; charset=utf-8\r\n\
             Content-Transfer-Encoding: 7bit\r\n\
             \r\n\
             {text_intro}{text_pad}\r\n\
             --{boundary}\r\n\
             Content-Type: text/html; charset=utf-8\r\n\
             Content-Transfer-Encoding: 7bit\r\n\
             \r\n\
             {html_intro}{html_pad}</body></html>\r\n\
             \r\n\
             --{boundary}--\r\n"
        )
    };
    let base = skeleton("", "").len();
    let pad = bytes.saturating_sub(base);
    let text_pad = filler_lines(pad / 2, false);
    let html_budget = pad.saturating_sub(text_pad.len());
    let html_pad = if html_budget > 0 {
        filler_lines(html_budget, true)
    } else {
        String::new()
    };
    skeleton(&text_pad, &html_pad).into_bytes()
}

/// A deliberately broken mail: no Message-ID, garbage header lines, raw
/// 8-bit bytes in headers and body, a broken encoded-word, an unknown
/// charset, invalid base64 and quoted-printable, bare LFs, and a multipart
/// whose closing boundary never comes.
pub fn malformed_mail() -> Vec<u8> {
    let mut m: Vec<u8> = Vec::new();
    m.extend_from_slice(b"Received: from ??? by mx.test.example; garbage date\r\n");
    m.extend_from_slice(b"From: \"Broken \xe4\xf6\xfc Sender\" <broken@example.net\r\n");
    m.extend_from_slice(b"To: helpdesk@test.example,,, <>\r\n");
    m.extend_from_slice(b"Subject: =?utf-8?B?!!!not-base64!!!?= \xff\xfe raw bytes\r\n");
    m.extend_from_slice(b"Date: Yesterday at noon\r\n");
    m.extend_from_slice(b"this line is not a header at all\r\n");
    m.extend_from_slice(b": empty header name\r\n");
    m.extend_from_slice(b"X-Empty:\r\n");
    m.extend_from_slice(b"X-Bare-LF: header ended by a bare LF\n");
    m.extend_from_slice(b"MIME-Version: 1.0\r\n");
    m.extend_from_slice(b"Content-Type: multipart/mixed; boundary=\"XXX-never-closed\"\r\n");
    m.extend_from_slice(b"\r\n");
    m.extend_from_slice(b"--XXX-never-closed\r\n");
    m.extend_from_slice(b"Content-Type: text/plain; charset=x-unknown-charset\r\n");
    m.extend_from_slice(b"Content-Transfer-Encoding: quoted-printable\r\n\r\n");
    m.extend_from_slice(b"Broken QP =ZZ =4 =\r\nsoft break, and 8-bit: \xc3\x28 \xa0\xa1\n");
    m.extend_from_slice(b"bare LF line\nanother bare LF line\n");
    m.extend_from_slice(b"--XXX-never-closed\r\n");
    m.extend_from_slice(b"Content-Type: application/octet-stream; name=\"a.bin\"\r\n");
    m.extend_from_slice(b"Content-Transfer-Encoding: base64\r\n");
    m.extend_from_slice(b"Content-Disposition: attachment; filename=\"a.bin\r\n\r\n");
    m.extend_from_slice(b"@@@this is *not* base64!!!\r\nQUJD=RE\r\n====\r\n");
    m.extend_from_slice(b"--XXX-never-close\r\n");
    m.extend_from_slice(b"truncated part without headers and without the final boundary \x80\x81");
    m
}
