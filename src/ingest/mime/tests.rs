//! The scan against hand-built and random MIME trees: where it cuts, what
//! it counts, and that it never counts fewer levels than mail-parser builds.

use super::*;

#[test]
fn shallow_mail_is_not_cut() {
    assert_eq!(scan(&nested_messages(MAX_NESTING)).cut, None);
    let raw = b"From: a@x\r\nContent-Type: multipart/mixed; boundary=\"A\"\r\n\r\n--A\r\n\
Content-Type: text/plain\r\n\r\nhi\r\n--A--\r\n";
    assert_eq!(
        scan(raw),
        Scan {
            max_depth: 1,
            ..Scan::default()
        }
    );
}

#[test]
fn deep_messages_are_cut_at_the_level_over_the_limit() {
    let raw = nested_messages(MAX_NESTING + 1);
    let cut = scan(&raw).cut.expect("a cut");
    assert_eq!(cut.why, CutReason::Nesting);
    let header = b"From: a@example.net\r\nSubject: deep\r\nMessage-ID: <deep@x>\r\n".len();
    let level = b"Content-Type: message/rfc822\r\n\r\n".len();
    assert_eq!(cut.at, header + (MAX_NESTING + 1) * level);
}

/// `levels` nested multiparts with boundaries named after `tag`.
fn nested_multiparts(tag: &str, levels: usize) -> String {
    let mut part = String::new();
    for i in 0..levels {
        part.push_str(&format!(
            "Content-Type: multipart/mixed; boundary={tag}{i}\r\n\r\n--{tag}{i}\r\n"
        ));
    }
    part.push_str("Content-Type: text/plain\r\n\r\ntext\r\n");
    for i in (0..levels).rev() {
        part.push_str(&format!("--{tag}{i}--\r\n"));
    }
    part
}

#[test]
fn deep_multiparts_count_and_close() {
    // Two siblings 60 deep: never more than 61 levels at once.
    let raw = format!(
        "From: a@x\r\nContent-Type: multipart/mixed; boundary=top\r\n\r\n--top\r\n{}--top\r\n{}--top--\r\n",
        nested_multiparts("a", 60),
        nested_multiparts("b", 60)
    );
    assert_eq!(scan(raw.as_bytes()).cut, None);
    let raw = format!("From: a@x\r\n{}", nested_multiparts("a", MAX_NESTING + 1));
    assert_eq!(
        scan(raw.as_bytes()).cut.map(|c| c.why),
        Some(CutReason::Nesting)
    );
}

#[test]
fn boundaries_in_mid_line_count_as_the_parser_sees_them() {
    let mut raw = b"From: a@x\r\n".to_vec();
    for i in 0..=MAX_NESTING {
        raw.extend_from_slice(
            format!("Content-Type: multipart/mixed; boundary=b{i}z\r\n\r\nxx--b{i}z\r\n")
                .as_bytes(),
        );
    }
    let scan = scan(&raw);
    assert_eq!(scan.cut.map(|c| c.why), Some(CutReason::Nesting));
    assert!(scan.midline_boundary.is_some());
}

#[test]
fn digest_parts_without_type_are_messages() {
    let mut raw = b"From: a@x\r\n".to_vec();
    for i in 0..=MAX_NESTING / 2 {
        raw.extend_from_slice(
            format!("Content-Type: multipart/digest; boundary=d{i}\r\n\r\n--d{i}\r\n\r\n")
                .as_bytes(),
        );
    }
    assert_eq!(scan(&raw).cut.map(|c| c.why), Some(CutReason::Nesting));
}

#[test]
fn encoded_messages_are_looked_into() {
    let inner = nested_messages(MAX_NESTING);
    let encoded = base64::engine::general_purpose::STANDARD.encode(&inner);
    let raw = format!(
        "From: a@x\r\nContent-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n{encoded}\r\n"
    );
    let cut = scan(raw.as_bytes()).cut.expect("a cut");
    assert_eq!(cut.why, CutReason::Nesting);
    assert_eq!(
        cut.at,
        raw.find("\r\n\r\n").expect("a body") + 4,
        "cut where the encoded message starts"
    );
}

#[test]
fn boundary_parameters() {
    let read = |params: &str| match boundary_param(params) {
        Boundary::Some(b) => Some(String::from_utf8(b).expect("utf-8")),
        Boundary::None => None,
        Boundary::Unreadable => Some("?".into()),
    };
    assert_eq!(
        read(" boundary=\"Fax_Boundary\""),
        Some("Fax_Boundary".into())
    );
    assert_eq!(read(" charset=x; BOUNDARY=ab-c ; x=y"), Some("ab-c".into()));
    assert_eq!(
        read(" x=\"a;boundary=b\"; boundary=\"c d\""),
        Some("c d".into())
    );
    assert_eq!(read(" charset=utf-8"), None);
    assert_eq!(read(" boundary*0=a; boundary*1=b"), Some("?".into()));
    assert_eq!(read(" boundary=a; boundary=b"), Some("?".into()));
}

#[test]
fn doubtful_headers_are_counted_the_deeper_way() {
    // The last Content-Type is the one the parser reads; a comment
    // does not hide the type; an odd encoding counts both ways.
    for level in [
        "Content-Type: text/plain\r\nContent-Type: message/rfc822\r\n\r\n",
        "Content-Type: (x) Message / RFC822 (y)\r\n\r\n",
        "Content-Type: message/rfc822\r\nContent-Transfer-Encoding: x-odd\r\n\r\n",
    ] {
        let mut raw = b"From: a@x\r\n".to_vec();
        for _ in 0..=MAX_NESTING {
            raw.extend_from_slice(level.as_bytes());
        }
        assert_eq!(
            scan(&raw).cut.map(|c| c.why),
            Some(CutReason::Nesting),
            "{level}"
        );
    }
}

#[test]
fn boundaries_that_never_appear_do_not_make_it_quadratic() {
    let mut raw = b"From: a@x\r\nContent-Type: multipart/mixed; boundary=A\r\n\r\n--A\r\n".to_vec();
    for i in 0..20_000 {
        raw.extend_from_slice(
            format!("Content-Type: multipart/mixed; boundary=never{i}\r\n\r\nx\r\n--A\r\n")
                .as_bytes(),
        );
    }
    raw.extend_from_slice(&vec![b'x'; 1 << 20]);
    let cut = scan(&raw).cut.expect("a cut");
    assert_eq!(cut.why, CutReason::Cost);
}

/// How deep mail-parser's parsed tree really is: multiparts and
/// messages, as the scan counts them.
pub(super) fn parsed_depth(message: &mail_parser::Message<'_>, part: usize) -> usize {
    use mail_parser::PartType;
    match message.parts.get(part).map(|p| &p.body) {
        Some(PartType::Multipart(children)) => {
            1 + children
                .iter()
                .map(|&c| c as usize)
                .filter(|&c| c > part)
                .map(|c| parsed_depth(message, c))
                .max()
                .unwrap_or(0)
        }
        Some(PartType::Message(inner)) => 1 + parsed_depth(inner, 0),
        _ => 0,
    }
}

/// A random entity of the shapes hostile mail takes, `levels` deep at
/// most: boundaries in mid-line, missing or repeated closings, parts of
/// a digest without a type, repeated Content-Types, encoded messages.
fn entity(rng: &mut impl rand::Rng, levels: usize, tag: &mut usize, out: &mut String) {
    *tag += 1;
    let b = format!("b{tag}");
    let kind = if levels == 0 {
        0
    } else {
        rng.random_range(0..9)
    };
    let sep = |rng: &mut dyn rand::RngCore| match rand::Rng::random_range(rng, 0..4) {
        0 => "x ",
        _ => "",
    };
    match kind {
            0 => out.push_str("Content-Type: text/plain\r\n\r\nsome text\r\n"),
            1 | 2 => {
                let sub = if kind == 1 { "mixed" } else { "digest" };
                out.push_str(&format!(
                    "Content-Type: multipart/{sub}; boundary=\"{b}\"\r\n\r\npreamble\r\n"
                ));
                for _ in 0..rng.random_range(1..3) {
                    out.push_str(&format!("{}--{b}\r\n", sep(rng)));
                    if sub == "digest" && rng.random_bool(0.5) {
                        out.push_str("\r\n");
                        let mut inner = String::new();
                        entity(rng, levels - 1, tag, &mut inner);
                        out.push_str(&inner);
                    } else {
                        entity(rng, levels - 1, tag, out);
                    }
                }
                if rng.random_bool(0.8) {
                    out.push_str(&format!("{}--{b}--\r\n", sep(rng)));
                }
            }
            3 | 4 => {
                if rng.random_bool(0.3) {
                    out.push_str("Content-Type: text/plain\r\n");
                }
                out.push_str("Content-Type: message/rfc822\r\n\r\nSubject: inner\r\n");
                entity(rng, levels - 1, tag, out);
            }
            5 => {
                let mut inner = String::from("Subject: encoded\r\n");
                entity(rng, levels - 1, tag, &mut inner);
                let encoded = base64::engine::general_purpose::STANDARD.encode(inner);
                out.push_str(&format!(
                    "Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n{encoded}\r\n"
                ));
            }
            6 => out.push_str(&format!(
                "Content-Type: multipart/mixed; boundary={b}\r\n\r\n--{b}\r\n\r\ntext --{b}\r\nContent-Type: message/rfc822\r\n\r\nSubject: x\r\n\r\n--{b}--\r\n"
            )),
            7 => {
                // Quoted-printable, every "=" and line end encoded.
                let mut inner = String::from("Subject: qp\r\n");
                entity(rng, levels - 1, tag, &mut inner);
                let encoded = inner.replace('=', "=3D").replace("\r\n", "=0D=0A=\r\n");
                out.push_str(&format!(
                    "Content-Type: message/rfc822\r\nContent-Transfer-Encoding: Quoted-Printable\r\n\r\n{encoded}\r\n"
                ));
            }
            _ => {
                // A boundary that never appears, then a nested message.
                out.push_str(&format!(
                    "Content-Type: multipart/mixed; boundary=\"never{b}\"\r\n\r\n--{b}x\r\nContent-Type: message/rfc822\r\n\r\n"
                ));
                entity(rng, levels - 1, tag, out);
            }
        }
}

#[test]
fn the_scan_never_counts_fewer_levels_than_the_parser_builds() {
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(13);
    let mut deepest = 0;
    let mut compared = 0;
    let samples = 3000;
    for _ in 0..samples {
        let mut raw = String::from("From: a@x\r\nSubject: s\r\n");
        entity(&mut rng, 6, &mut 0, &mut raw);
        // With CRLF and with bare LF line ends.
        for raw in [raw.clone(), raw.replace("\r\n", "\n")] {
            let scanned = scan(raw.as_bytes());
            assert_eq!(scanned.cut, None, "{raw}");
            // mail-parser's debug assertions fire on some broken shapes
            // (in debug builds only); those cannot be compared.
            let parsed = std::panic::catch_unwind(|| {
                mail_parser::MessageParser::default()
                    .parse(raw.as_bytes())
                    .map(|m| parsed_depth(&m, 0))
            });
            let Ok(Some(parsed)) = parsed else {
                continue;
            };
            compared += 1;
            deepest = deepest.max(parsed);
            assert!(
                scanned.max_depth >= parsed,
                "scan {} < parsed {parsed}:\n{raw}",
                scanned.max_depth
            );
        }
    }
    assert!(
        deepest >= 5,
        "the mails were deep enough to tell: {deepest}"
    );
    assert!(
        compared > samples,
        "only {compared} of {} compared",
        2 * samples
    );
}
