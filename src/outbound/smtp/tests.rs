//! SMTP submission: redaction, multi-line replies, refusal sorting.

use super::*;

#[test]
fn credentials_echoed_by_a_server_are_redacted() {
    let token = SignInSecret::Token(SecretString::from("eyJ.secret-token"));
    let line = sasl_line("a@b", &token);
    let echoed = SmtpError::AuthRejected {
        server: "smtp.example.net".into(),
        user: "a@b".into(),
        what: "access token",
        reply: format!(
            "535 5.7.3 bad line {} for eyJ.secret-token",
            line.expose_secret()
        ),
    };
    let text = echoed
        .redacted(&[line.expose_secret(), "eyJ.secret-token"])
        .to_string();
    assert!(!text.contains("secret-token"), "{text}");
    assert!(!text.contains(line.expose_secret()), "{text}");
    assert!(
        text.contains("535 5.7.3 bad line [redacted] for [redacted]"),
        "{text}"
    );
}

#[test]
fn credentials_echoed_cut_short_are_redacted() {
    let secret = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.secret-token";
    let token = SignInSecret::Token(SecretString::from(secret));
    let line = sasl_line("a@b", &token);
    let echoed = SmtpError::AuthRejected {
        server: "smtp.example.net".into(),
        user: "a@b".into(),
        what: "access token",
        reply: format!(
            "535 5.7.3 got {}... and {}...",
            &line.expose_secret()[..24],
            &secret[..20]
        ),
    };
    let text = echoed.redacted(&[line.expose_secret(), secret]).to_string();
    assert!(!text.contains(&secret[..16]), "{text}");
    assert!(!text.contains(&line.expose_secret()[..16]), "{text}");
    assert!(
        text.contains("got [redacted]... and [redacted]..."),
        "{text}"
    );
}

#[tokio::test]
async fn multi_line_replies_are_read_whole() {
    let mut input: &[u8] = b"250-mx.example.net\r\n250-STARTTLS\r\n250 AUTH XOAUTH2\r\nrest";
    let reply = read_reply(&mut input).await.expect("reply");
    assert_eq!(reply.code, 250);
    assert_eq!(reply.lines.len(), 3);
    assert_eq!(input, b"rest", "nothing past the reply is consumed");

    let mut bad: &[u8] = b"250-a\r\n354 b\r\n";
    assert!(read_reply(&mut bad).await.is_err());
    let mut closed: &[u8] = b"220-half\r\n";
    assert!(read_reply(&mut closed).await.is_err());
}

#[test]
fn refusals_about_the_message_are_final_unless_a_policy_says_why() {
    assert!(!is_policy("550 5.1.1 <bob@example.net>: user unknown"));
    assert!(is_policy(
        "550 5.7.1 Client does not have permissions to send as this sender"
    ));
    assert!(is_policy(
        "554 5.2.252 SendAsDenied; helpdesk@contoso.com not allowed"
    ));
    assert!(!is_policy("552 5.3.4 Message size exceeds fixed limit"));
}

#[test]
fn the_ehlo_name_is_the_senders_domain() {
    assert_eq!(hello_name("helpdesk@Contoso.com"), "contoso.com");
    assert_eq!(hello_name("odd"), "localhost");
    assert_eq!(hello_name("a@bad domain"), "localhost");
}
