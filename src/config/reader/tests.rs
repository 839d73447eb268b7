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

// ---------------------------------------------------------------------------
// protocol = "graph"

/// A Graph reader as the issue writes it; keys added below land on line 14.
const GRAPH: &str = r#"
[[oauth]]
name = "contoso"
tenant = "00000000-0000-0000-0000-000000000000"
client_id = "11111111-1111-1111-1111-111111111111"
client_secret = "s"

[[reader]]
name = "graph-desk"
protocol = "graph"
username = "helpdesk@contoso.com"
oauth = "contoso"
grant = "client_credentials"
"#;

fn graph_with(extra: &str) -> String {
    format!("{GRAPH}{extra}\n")
}

#[test]
fn graph_reader_defaults() {
    let r = &parse(GRAPH).expect("valid").readers[0];
    assert_eq!(r.protocol, Protocol::Graph);
    assert_eq!(r.protocol.as_str(), "graph");
    assert_eq!(
        (r.host.as_str(), r.port, r.tls),
        ("graph.microsoft.com", 443, Tls::Implicit)
    );
    assert_eq!(r.folder, "Inbox");
    assert_eq!(r.after, After::Seen);
    assert_eq!(r.backfill, Backfill::Unseen);
    assert!(!r.idle);
    assert!(r.ca_file.is_none() && r.reply.is_none());
    assert_eq!(r.username, "helpdesk@contoso.com");
}

#[test]
fn graph_reader_takes_every_grant() {
    for (grant, extra) in [
        ("client_credentials", ""),
        ("authorization_code", ""),
        ("device_code", ""),
        ("password", "password = { env = \"DESK_PW\" }\n"),
    ] {
        let text = GRAPH.replace(
            "grant = \"client_credentials\"",
            &format!("{extra}grant = \"{grant}\""),
        );
        let r = &parse(&text).expect(grant).readers[0];
        assert_eq!(r.oauth().expect("oauth").grant.as_str(), grant);
    }
}

#[test]
fn graph_host_follows_the_cloud() {
    for (cloud, host) in [
        ("global", "graph.microsoft.com"),
        ("usgov", "graph.microsoft.us"),
        ("usgov-dod", "dod-graph.microsoft.us"),
        ("china", "microsoftgraph.chinacloudapi.cn"),
    ] {
        let text = GRAPH.replace(
            "name = \"contoso\"\n",
            &format!("name = \"contoso\"\ncloud = \"{cloud}\"\n"),
        );
        let r = &parse(&text).expect(cloud).readers[0];
        assert_eq!((r.host.as_str(), r.port), (host, 443), "{cloud}");
        // Its own cloud's host, written out, is accepted too.
        let text = format!("{text}host = \"{host}\"\n");
        parse(&text).expect(cloud);
    }
}

#[test]
fn graph_host_of_another_cloud_or_service_is_refused() {
    let err = error_text(&graph_with("host = \"graph.microsoft.us\""));
    assert!(
        err.starts_with("/etc/m2t/config.toml:14: reader.host: ")
            && err.contains("in the usgov cloud")
            && err.contains("host = \"graph.microsoft.com\""),
        "{err}"
    );
    let err = error_text(&graph_with("host = \"microsoftgraph.chinacloudapi.cn\""));
    assert!(
        err.contains(":14: reader.host: ") && err.contains("china"),
        "{err}"
    );
    // An Exchange host is the wrong service, whichever cloud.
    for host in [
        "outlook.office365.com",
        "smtp.office365.com",
        "partner.outlook.cn",
    ] {
        let err = error_text(&graph_with(&format!("host = \"{host}\"")));
        assert!(
            err.contains(":14: reader.host: ")
                && err.contains("Exchange Online")
                && err.contains("graph.microsoft.com"),
            "{host}: {err}"
        );
    }
    // And the reverse: an IMAP reader pointed at Graph.
    let err = error_text(&GOOD.replace("outlook.office365.com", "graph.microsoft.com"));
    assert!(
        err.contains(":16: reader.host: ") && err.contains("protocol = \"graph\""),
        "{err}"
    );
    // A host no cloud claims (a stand-in) is the admin's business.
    let r = &parse(&graph_with("host = \"graph.test.example\"\nport = 8443"))
        .expect("valid")
        .readers[0];
    assert_eq!((r.host.as_str(), r.port), ("graph.test.example", 8443));
}

#[test]
fn graph_tls_and_ca_file() {
    let err = error_text(&graph_with("tls = \"starttls\""));
    assert!(
        err.starts_with("/etc/m2t/config.toml:14: reader.tls: ") && err.contains("STARTTLS"),
        "{err}"
    );
    let err = error_text(&graph_with("tls = \"none\""));
    assert!(
        err.contains(":14: reader.tls: ")
            && err.contains("graph.microsoft.com")
            && err.contains("loopback"),
        "{err}"
    );
    for host in ["127.0.0.1", "localhost", "[::1]"] {
        let text = graph_with(&format!("host = \"{host}\"\ntls = \"none\"\nport = 8080"));
        let r = &parse(&text).expect("loopback").readers[0];
        assert_eq!((r.tls, r.port), (Tls::None, 8080), "{host}");
    }
    let r = &parse(&graph_with("host = \"127.0.0.1\"\ntls = \"none\""))
        .expect("valid")
        .readers[0];
    assert_eq!(r.port, 443, "the port stays Graph's unless written");
    let r = &parse(&graph_with("ca_file = \"ca.pem\""))
        .expect("valid")
        .readers[0];
    assert_eq!(
        r.ca_file.as_deref(),
        Some(std::path::Path::new("/etc/m2t/ca.pem"))
    );
}

#[test]
fn graph_folders() {
    for folder in [
        "inbox",
        "Archive",
        "Inbox/Support",
        "Posteingang/Support/Ärger",
    ] {
        let r = &parse(&graph_with(&format!("folder = \"{folder}\"")))
            .expect(folder)
            .readers[0];
        assert_eq!(r.folder, folder);
    }
    for bad in ["", " ", "/Inbox", "Inbox/", "Inbox//Support"] {
        let err = error_text(&graph_with(&format!("folder = \"{bad}\"")));
        assert!(
            err.starts_with("/etc/m2t/config.toml:14: reader.folder: "),
            "{bad:?}: {err}"
        );
    }
}

#[test]
fn graph_after_steps() {
    for (text, want) in [
        ("seen", After::Seen),
        ("keep", After::Keep),
        ("delete", After::Delete),
        ("move:Archive", After::Move("Archive".into())),
        ("move:Inbox/Done", After::Move("Inbox/Done".into())),
    ] {
        let r = &parse(&graph_with(&format!("after = \"{text}\"")))
            .expect(text)
            .readers[0];
        assert_eq!(r.after, want, "{text}");
    }
    for bad in ["archive", "move:", "move:Inbox//Done", "move:/Done"] {
        let err = error_text(&graph_with(&format!("after = \"{bad}\"")));
        assert!(
            err.starts_with("/etc/m2t/config.toml:14: reader.after: "),
            "{bad}: {err}"
        );
    }
}

#[test]
fn graph_refuses_what_it_cannot_use() {
    for idle in ["true", "false"] {
        let err = error_text(&graph_with(&format!("idle = {idle}")));
        assert!(
            err.starts_with("/etc/m2t/config.toml:14: reader.idle: ")
                && err.contains("no IDLE")
                && err.contains("poll_interval"),
            "{err}"
        );
    }
    let plain = GRAPH.replace("oauth = \"contoso\"\n", "").replace(
        "grant = \"client_credentials\"",
        "auth = \"plain\"\npassword = \"pw\"",
    );
    let err = error_text(&plain);
    assert!(
        err.starts_with("/etc/m2t/config.toml:12: reader.auth: ")
            && err.contains("OAuth tokens only"),
        "{err}"
    );
    let err = error_text(&GRAPH.replace("helpdesk@contoso.com", ""));
    assert!(
        err.contains(":9: reader.username: ") && err.contains("mailbox"),
        "{err}"
    );
}

#[test]
fn reply_goes_over_graph_by_default_for_graph_readers() {
    let r = &parse(&graph_with("[reader.reply]\nsubject = \"{tag}\""))
        .expect("valid")
        .readers[0];
    let reply = r.reply.as_ref().expect("reply");
    assert_eq!(reply.via, Via::Graph);
    assert_eq!(reply.via.as_str(), "graph");
    assert_eq!(
        (reply.host.as_str(), reply.port, reply.tls, &reply.ca_file),
        ("graph.microsoft.com", 443, Tls::Implicit, &None)
    );
    assert_eq!(reply.from, "helpdesk@contoso.com");
    assert!(r.sends_over_graph());

    // The reader's own endpoint, stand-in and CA included.
    let text = graph_with(
        "host = \"127.0.0.1\"\nport = 8443\nca_file = \"ca.pem\"\n\
         [reader.reply]\nvia = \"graph\"\nfrom = \"noreply@contoso.com\"",
    );
    let r = &parse(&text).expect("valid").readers[0];
    let reply = r.reply.as_ref().expect("reply");
    assert_eq!(
        (reply.host.as_str(), reply.port, reply.ca_file.as_deref()),
        (
            "127.0.0.1",
            8443,
            Some(std::path::Path::new("/etc/m2t/ca.pem"))
        )
    );
    assert_eq!(reply.from, "noreply@contoso.com");

    let r = &parse(&graph_with("[reader.reply]\nvia = \"smtp\""))
        .expect("valid")
        .readers[0];
    let reply = r.reply.as_ref().expect("reply");
    assert_eq!(
        (reply.via, reply.host.as_str(), reply.port, reply.tls),
        (Via::Smtp, "smtp.office365.com", 587, Tls::StartTls)
    );
    assert!(!r.sends_over_graph());

    let usgov = GRAPH.replace(
        "name = \"contoso\"\n",
        "name = \"contoso\"\ncloud = \"usgov\"\n",
    );
    let r = &parse(&format!("{usgov}[reader.reply]\nvia = \"smtp\"\n"))
        .expect("valid")
        .readers[0];
    assert_eq!(r.reply.as_ref().expect("reply").host, "smtp.office365.us");
}

#[test]
fn reply_via_smtp_stays_the_default_for_imap_and_pop3() {
    let r = &parse(&format!("{GOOD}[reader.reply]\n"))
        .expect("valid")
        .readers[0];
    assert_eq!(r.reply.as_ref().expect("reply").via, Via::Smtp);
    assert!(!r.sends_over_graph());
    let r = &parse(&format!("{GOOD}[reader.reply]\nvia = \"smtp\"\n"))
        .expect("valid")
        .readers[0];
    assert_eq!(r.reply.as_ref().expect("reply").via, Via::Smtp);

    // GOOD ends on line 23; the reply table is 24, via 25.
    let err = error_text(&format!("{GOOD}[reader.reply]\nvia = \"graph\"\n"));
    assert!(
        err.starts_with("/etc/m2t/config.toml:25: reader.reply.via: ")
            && err.contains("protocol = \"graph\""),
        "{err}"
    );
    let err = error_text(&format!("{GOOD}[reader.reply]\nvia = \"pigeon\"\n"));
    assert!(err.contains(":25: reader.reply.via: "), "{err}");
}

#[test]
fn reply_over_graph_refuses_smtp_server_keys() {
    for (key, value) in [
        ("host", "\"smtp.office365.com\""),
        ("port", "587"),
        ("tls", "\"starttls\""),
        ("ca_file", "\"ca.pem\""),
    ] {
        // GRAPH ends on line 13: the reply table is 14, `from` 15, the key 16.
        let err = error_text(&graph_with(&format!(
            "[reader.reply]\nfrom = \"desk@contoso.com\"\n{key} = {value}"
        )));
        assert!(
            err.starts_with(&format!("/etc/m2t/config.toml:16: reader.reply.{key}: "))
                && err.contains("via = \"smtp\""),
            "{key}: {err}"
        );
    }
}

#[test]
fn replying_over_graph_changes_the_fingerprint() {
    let material = |text: &str| {
        let config = parse(text).expect("valid");
        config.readers[0].fingerprint_material(config.oauth.first())
    };
    let graph = material(&graph_with("[reader.reply]\nvia = \"graph\""));
    let smtp = material(&graph_with("[reader.reply]\nvia = \"smtp\""));
    assert_ne!(graph, smtp, "the reader's token scope differs");
    let other_subject = material(&graph_with(
        "[reader.reply]\nvia = \"graph\"\nsubject = \"Ticket {tag}\"",
    ));
    assert_eq!(graph, other_subject, "the text is the sender's alone");
}

/// The reader of issue 16 as written there, keys and comments alike.
const ISSUE_SNIPPET: &str = r#"[[reader]]
name = "graph-desk"
protocol = "graph"
username = "helpdesk@contoso.com"      # the mailbox (UPN or SMTP address): /users/{username}
oauth = "contoso"                      # any grant: password, authorization_code, device_code, client_credentials
grant = "client_credentials"
folder = "Inbox"                       # a well-known name (inbox, archive, ...) or a path "Inbox/Support"
after = "seen"                         # seen = isRead true (default), keep, delete, move:FOLDER
# host = "graph.microsoft.com"         # default: the cloud's Graph host; port 443; ca_file as for IMAP
# port = 443
# ca_file = "..."
# tls = "none"                         # loopback only, as for IMAP
"#;

#[test]
fn the_issue_snippet_parses_and_the_example_carries_it() {
    let app = "[[oauth]]\nname = \"contoso\"\ntenant = \"t\"\nclient_id = \"c\"\n\
               client_secret = { env = \"CONTOSO_SECRET\" }\n\n";
    let config = parse(&format!("{app}{ISSUE_SNIPPET}")).expect("valid");
    let r = &config.readers[0];
    assert_eq!(
        (r.protocol, r.host.as_str(), r.port, r.folder.as_str()),
        (Protocol::Graph, "graph.microsoft.com", 443, "Inbox")
    );
    // The commented-out keys, uncommented, hold too (tls = "none" only
    // once the host is loopback).
    let all = ISSUE_SNIPPET
        .replace("# host = \"graph.microsoft.com\"", "host = \"127.0.0.1\"")
        .replace("# port", "port")
        .replace("# ca_file", "ca_file")
        .replace("# tls", "tls");
    let r = &parse(&format!("{app}{all}")).expect("valid").readers[0];
    assert_eq!((r.tls, r.port), (Tls::None, 443));

    let example = include_str!("../../../config.example.toml");
    for line in ISSUE_SNIPPET.lines() {
        assert!(
            example.contains(&format!("# {line}\n")),
            "config.example.toml lacks the commented line {line:?}"
        );
    }
}
