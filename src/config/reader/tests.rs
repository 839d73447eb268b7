//! `[[reader]]`'s own keys: transport, housekeeping, batching, backfill.

use std::time::Duration;

use super::*;
use crate::config::tests::{GOOD, error_text, parse};

#[test]
fn batch_bytes_is_a_byte_size() {
    let config = parse(&GOOD.replace(
        "poll_interval = \"30s\"",
        "poll_interval = \"30s\"\nbatch_bytes = \"8 MiB\"",
    ))
    .expect("valid");
    assert_eq!(config.readers[0].batch_bytes, 8 << 20);
    let config = parse(GOOD).expect("valid");
    assert_eq!(config.readers[0].batch_bytes, DEFAULT_BATCH_BYTES);
    for bad in ["\"lots\"", "\"0 B\"", "-1"] {
        let err = error_text(&GOOD.replace(
            "poll_interval = \"30s\"",
            &format!("poll_interval = \"30s\"\nbatch_bytes = {bad}"),
        ));
        assert!(
            err.starts_with("/etc/m2t/config.toml:24: reader.batch_bytes: "),
            "{bad}: {err}"
        );
    }
}

#[test]
fn duplicate_reader_names_are_rejected() {
    let start = GOOD.find("[[reader]]").expect("reader table");
    let text = format!("{GOOD}\n{}", &GOOD[start..]);
    let err = error_text(&text);
    assert!(err.contains("another [[reader]] has this name"), "{err}");
}

#[test]
fn transport_and_housekeeping_options() {
    let config = parse(GOOD).expect("valid");
    let r = &config.readers[0];
    assert_eq!(
        (r.tls, r.after.clone(), r.idle),
        (Tls::Implicit, After::Seen, false)
    );

    let pop = GOOD
        .replace(
            "protocol = \"imap\"",
            "protocol = \"pop3\"\ntls = \"starttls\"",
        )
        .replace("port = 993\n", "")
        .replace("folder = \"INBOX\"\n", "");
    let config = parse(&pop).expect("valid pop3");
    let r = &config.readers[0];
    assert_eq!((r.port, r.after.clone()), (110, After::Keep));

    let text = GOOD.replace(
        "folder = \"INBOX\"",
        "folder = \"INBOX\"\nafter = \"move:Erledigt/Bearbeitet\"\nidle = true",
    );
    let r = &parse(&text).expect("valid").readers[0];
    assert_eq!(r.after, After::Move("Erledigt/Bearbeitet".into()));
    assert!(r.idle);

    let err = error_text(&GOOD.replace("folder = \"INBOX\"", "after = \"archive\""));
    assert!(
        err.contains("reader.after") && err.contains("\"archive\" is not an after-step"),
        "{err}"
    );
    let err = error_text(&GOOD.replace("folder = \"INBOX\"", "after = \"move:\""));
    assert!(err.contains("needs a folder name"), "{err}");
    let err = error_text(&pop.replace(
        "poll_interval = \"30s\"",
        "poll_interval = \"30s\"\nafter = \"seen\"",
    ));
    assert!(
        err.contains("reader.after") && err.contains("POP3 has no flags"),
        "{err}"
    );
    let err = error_text(&pop.replace(
        "poll_interval = \"30s\"",
        "poll_interval = \"30s\"\nfolder = \"Archive\"",
    ));
    assert!(
        err.contains("reader.folder") && err.contains("POP3 reads the inbox only"),
        "{err}"
    );
    let err = error_text(&pop.replace(
        "poll_interval = \"30s\"",
        "poll_interval = \"30s\"\nidle = true",
    ));
    assert!(err.contains("reader.idle"), "{err}");
}

#[test]
fn backfill_and_ack_max_age() {
    let r = &parse(GOOD).expect("valid").readers[0];
    assert_eq!(r.backfill, Backfill::Unseen, "the default");
    assert_eq!(r.mail.current().ack_max_age, DEFAULT_ACK_MAX_AGE);
    for (text, want) in [
        ("all", Backfill::All),
        ("none", Backfill::None),
        ("unseen", Backfill::Unseen),
        ("7d", Backfill::Within(Duration::from_secs(7 * 86_400))),
        ("12h", Backfill::Within(Duration::from_secs(12 * 3600))),
    ] {
        let config = parse(&GOOD.replace(
            "folder = \"INBOX\"",
            &format!("folder = \"INBOX\"\nbackfill = \"{text}\""),
        ))
        .expect("valid");
        assert_eq!(config.readers[0].backfill, want, "{text}");
    }
    for bad in ["everything", "0s", "-1d"] {
        let err = error_text(&GOOD.replace(
            "folder = \"INBOX\"",
            &format!("folder = \"INBOX\"\nbackfill = \"{bad}\""),
        ));
        assert!(
            err.contains(":23: reader.backfill: ") && err.contains("is not a backfill"),
            "{err}"
        );
    }

    let reply = "\n[reader.reply]\nhost = \"smtp.example.com\"\n";
    let here = GOOD.replace(
        "folder = \"INBOX\"",
        "folder = \"INBOX\"\nack_max_age = \"3d\"",
    );
    let r = &parse(&format!("{here}{reply}")).expect("valid").readers[0];
    assert_eq!(
        r.mail.current().ack_max_age,
        Duration::from_secs(3 * 86_400)
    );
    let there = format!("{GOOD}{reply}ack_max_age = \"2h\"\n");
    let r = &parse(&there).expect("valid").readers[0];
    assert_eq!(r.mail.current().ack_max_age, Duration::from_secs(2 * 3600));
    let err = error_text(&format!("{here}{reply}ack_max_age = \"2h\"\n"));
    assert!(
        err.contains(":23: reader.ack_max_age: ") && err.contains("not both"),
        "{err}"
    );
}

#[test]
fn plain_text_only_to_loopback() {
    let none = GOOD.replace("protocol = \"imap\"", "protocol = \"imap\"\ntls = \"none\"");
    let err = error_text(&none);
    assert!(
        err.contains("reader.tls") && err.contains("outlook.office365.com"),
        "{err}"
    );
    for host in ["127.0.0.1", "localhost", "::1", "[::1]"] {
        let text = none.replace("outlook.office365.com", host);
        let r = &parse(&text).expect("loopback is fine").readers[0];
        assert_eq!(r.tls, Tls::None, "{host}");
    }
    assert!(!is_loopback("127.0.0.1.example.com"));
}
