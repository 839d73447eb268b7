//! The Microsoft Graph client (`source::graph::GraphClient`) against the
//! Graph stand-in over HTTPS with the test CA: folder resolution, delta
//! rounds (paging, incremental, steady state, expired state), `$value`,
//! the in-flight bound, throttling and faults with their retries, the
//! token refreshed once, the admin's error texts, the after-steps,
//! sendMail; and no token text in any error.

use mail2ticket_testkit as common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::certs::TestPki;
use common::idp_client::{PASSWORD, USER};
use common::{Fault, GRAPH_APP_SCOPE, GRAPH_SCOPE, GraphRoute, GraphServer, IdP, OUTLOOK_SCOPE};
use futures::future::BoxFuture;
use mail2ticket::outcome::FailureClass;
use mail2ticket::source::graph::{
    AfterStep, FolderId, GraphClient, GraphError, GraphOptions, GraphToken, RetryPolicy,
    TokenUnavailable, Wait, WaitReason,
};
use secrecy::{ExposeSecret, SecretString};

const SHARED: &str = "helpdesk@contoso.example";

/// Hands out its tokens in turn: the next one each time Graph refuses the
/// current one (as the token store drops a refused token and gets anew).
struct Tokens {
    tokens: Vec<String>,
    at: AtomicUsize,
    refused: AtomicUsize,
}

impl Tokens {
    fn new(tokens: &[String]) -> Arc<Tokens> {
        Arc::new(Tokens {
            tokens: tokens.to_vec(),
            at: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
        })
    }
}

impl GraphToken for Tokens {
    fn current(&self) -> BoxFuture<'_, Result<SecretString, TokenUnavailable>> {
        let i = self.at.load(Ordering::SeqCst).min(self.tokens.len() - 1);
        let token = SecretString::from(self.tokens[i].clone());
        Box::pin(async move { Ok(token) })
    }

    fn refused<'a>(&'a self, token: &'a SecretString) -> BoxFuture<'a, ()> {
        self.refused.fetch_add(1, Ordering::SeqCst);
        let i = self.at.load(Ordering::SeqCst);
        if self.tokens.get(i).map(String::as_str) == Some(token.expose_secret()) {
            self.at.fetch_add(1, Ordering::SeqCst);
        }
        Box::pin(async {})
    }
}

struct Env {
    idp: IdP,
    graph: GraphServer,
    _dir: tempfile::TempDir,
    ca_file: std::path::PathBuf,
    /// A delegated Graph token of USER.
    token: String,
    waits: Arc<Mutex<Vec<Wait>>>,
}

impl Env {
    fn new() -> Env {
        let idp = IdP::start();
        idp.add_user(USER, PASSWORD);
        let pki = TestPki::generate(&["127.0.0.1", "localhost"]);
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_file = pki.write_to(dir.path()).ca_file;
        let graph = GraphServer::start(&idp, &pki);
        graph.add_mailbox(USER);
        graph.add_mailbox(SHARED);
        let token = idp.issue_access_token_with_scope(USER, GRAPH_SCOPE);
        Env {
            idp,
            graph,
            _dir: dir,
            ca_file,
            token,
            waits: Arc::default(),
        }
    }

    fn options(&self, mailbox: &str) -> GraphOptions {
        let mut o = GraphOptions::new(mailbox);
        o.base_url = self.graph.url();
        o.ca_file = Some(self.ca_file.clone());
        o.timeout = Duration::from_secs(5);
        o.retry = RetryPolicy {
            max_retries: 3,
            backoff_base: Duration::from_millis(20),
            backoff_cap: Duration::from_millis(200),
            max_retry_after: Duration::from_secs(5),
        };
        o
    }

    fn client_with(&self, options: GraphOptions, tokens: Arc<Tokens>) -> GraphClient {
        let waits = self.waits.clone();
        GraphClient::new(options, tokens)
            .expect("client")
            .with_wait_hook(Arc::new(move |w: &Wait| {
                waits.lock().expect("waits").push(*w)
            }))
    }

    /// USER's client with USER's delegated token.
    fn client(&self) -> GraphClient {
        self.client_with(
            self.options(USER),
            Tokens::new(std::slice::from_ref(&self.token)),
        )
    }

    fn waits(&self) -> Vec<Wait> {
        self.waits.lock().expect("waits").clone()
    }
}

fn mail(i: usize) -> Vec<u8> {
    common::mail(i)
}

/// Neither the token nor any 16-character piece of it in `text`.
fn assert_no_token(text: &str, token: &str) {
    assert!(token.len() > 16, "token too short to test with");
    for start in 0..=token.len() - 16 {
        let piece = &token[start..start + 16];
        assert!(!text.contains(piece), "token piece {piece:?} in {text:?}");
    }
}

#[tokio::test]
async fn folders_resolve_by_well_known_name_and_by_path() {
    let env = Env::new();
    let support = env.graph.add_folder(USER, "Inbox/Support");
    let alpha = env.graph.add_folder(USER, "Projects/Alpha's Desk");
    let client = env.client();

    let inbox = client.resolve_folder("INBOX").await.expect("inbox");
    assert_eq!(Some(inbox.id.clone()), env.graph.folder_id(USER, "inbox"));
    let archive = client.resolve_folder("Archive").await.expect("archive");
    assert_eq!(Some(archive.id), env.graph.folder_id(USER, "archive"));

    let resolved = client.resolve_folder("Inbox/Support").await.expect("path");
    assert_eq!(resolved.id, support);
    assert_eq!(resolved.path, "Inbox/Support");
    // A top-level folder by display name, a quote in a name, extra slashes.
    let resolved = client
        .resolve_folder("/projects//Alpha's Desk/")
        .await
        .expect("quoted path");
    assert_eq!(resolved.id, alpha);

    let err = client
        .resolve_folder("Inbox/Support/Nope")
        .await
        .expect_err("missing");
    assert!(err.is_misconfigured(), "{err}");
    assert_eq!(err.class(), FailureClass::Config);
    assert_eq!(
        err.to_string(),
        format!(
            "folder \"Inbox/Support/Nope\" does not exist in mailbox {USER}: no folder \"Nope\" under \"Inbox/Support\""
        )
    );
    env.graph.deliver(USER, "Inbox/Support", &mail(1));
    env.graph.deliver(USER, "Inbox/Support", &mail(2));
    let support = client.resolve_folder("Inbox/Support").await.expect("path");
    env.graph
        .set_read(USER, &env.graph.messages(USER, "Inbox/Support")[0].id, true);
    let info = client.folder_info(&support).await.expect("info");
    assert_eq!(
        (info.display_name.as_str(), info.total, info.unread),
        ("Support", 2, 1)
    );
    let err = client.resolve_folder("Nowhere").await.expect_err("missing");
    assert!(
        err.to_string().contains("no folder \"Nowhere\" at the top"),
        "{err}"
    );

    let requests = env.graph.requests();
    assert!(!requests.is_empty());
    assert!(
        requests.iter().all(|r| r.prefers_immutable_ids()),
        "every request asks for immutable ids"
    );
}

#[tokio::test]
async fn delta_pages_then_increments_then_one_request_when_nothing_changed() {
    let env = Env::new();
    let mut ids = Vec::new();
    for i in 0..7 {
        ids.push(env.graph.deliver(USER, "Inbox", &mail(i)));
    }
    let mut options = env.options(USER);
    options.page_size = 3;
    let client = env.client_with(options, Tokens::new(std::slice::from_ref(&env.token)));
    let inbox = client.resolve_folder("inbox").await.expect("inbox");
    env.graph.reset_requests();

    let first = client.delta(&inbox, None).await.expect("first round");
    assert_eq!(first.pages, 3);
    let got: Vec<&str> = first.items.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(got, ids.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(
        first.items[4].internet_message_id.as_deref(),
        Some(common::message_id(4).as_str())
    );
    assert!(
        first
            .items
            .iter()
            .all(|i| !i.is_read && i.received.is_some())
    );
    assert!(first.removed.is_empty());
    assert!(
        first.delta_link.contains("deltatoken"),
        "{}",
        first.delta_link
    );
    let requests = env.graph.requests();
    assert_eq!(requests.len(), 3);
    assert!(requests.iter().all(|r| r.route == GraphRoute::Delta));
    assert!(
        requests[0]
            .path_and_query
            .contains("select=id,internetMessageId,receivedDateTime,isRead")
    );
    assert!(
        requests
            .iter()
            .all(|r| r.prefer.iter().any(|p| p == "odata.maxpagesize=3")
                && r.prefers_immutable_ids()),
        "{requests:?}"
    );

    // A new mail, one read in Outlook, one deleted for good.
    let new = env.graph.deliver(USER, "Inbox", &mail(7));
    env.graph.set_read(USER, &ids[1], true);
    env.graph.remove_message(USER, &ids[2]);
    let second = client
        .delta(&inbox, Some(&first.delta_link))
        .await
        .expect("second round");
    let mut changed: Vec<(String, bool)> = second
        .items
        .iter()
        .map(|i| (i.id.clone(), i.is_read))
        .collect();
    changed.sort();
    let mut expected = vec![(ids[1].clone(), true), (new.clone(), false)];
    expected.sort();
    assert_eq!(changed, expected);
    assert_eq!(second.removed, vec![ids[2].clone()]);
    assert_ne!(second.delta_link, first.delta_link);

    // Steady state: nothing new is exactly one request.
    env.graph.reset_requests();
    let third = client
        .delta(&inbox, Some(&second.delta_link))
        .await
        .expect("steady state");
    assert!(third.items.is_empty() && third.removed.is_empty());
    assert_eq!(third.pages, 1);
    assert_eq!(env.graph.total_requests(), 1);
}

#[tokio::test]
async fn pages_come_one_at_a_time() {
    let env = Env::new();
    for i in 0..5 {
        env.graph.deliver(USER, "Inbox", &mail(i));
    }
    let mut options = env.options(USER);
    options.page_size = 2;
    let client = env.client_with(options, Tokens::new(std::slice::from_ref(&env.token)));
    let inbox = client.resolve_folder("inbox").await.expect("inbox");
    env.graph.reset_requests();
    let mut pager = client.delta_pages(&inbox, None).expect("pager");
    let page = pager.next_page().await.expect("page").expect("some");
    assert_eq!(page.items.len(), 2);
    assert!(page.delta_link.is_none());
    assert_eq!(env.graph.total_requests(), 1, "one page asked for so far");
    let mut sizes = vec![page.items.len()];
    let mut link = None;
    while let Some(page) = pager.next_page().await.expect("page") {
        sizes.push(page.items.len());
        link = page.delta_link.or(link);
    }
    assert_eq!(sizes, vec![2, 2, 1]);
    assert!(link.is_some());
    assert!(pager.next_page().await.expect("done").is_none());
}

#[tokio::test]
async fn an_expired_delta_state_says_resync() {
    let env = Env::new();
    env.graph.deliver(USER, "Inbox", &mail(1));
    let client = env.client();
    let inbox = client.resolve_folder("inbox").await.expect("inbox");
    let round = client.delta(&inbox, None).await.expect("round");
    env.graph.expire_delta_tokens(Some(USER));
    let err = client
        .delta(&inbox, Some(&round.delta_link))
        .await
        .expect_err("expired");
    assert!(err.is_resync(), "{err:?}");
    assert!(!err.is_misconfigured());
    assert!(err.to_string().contains("SyncStateNotFound"), "{err}");
    assert!(err.to_string().contains("synced in full again"), "{err}");
    // A full round works again.
    let again = client.delta(&inbox, None).await.expect("full round");
    assert_eq!(again.items.len(), 1);

    // And 410 on a page link in the middle of a round.
    for i in 2..30 {
        env.graph.deliver(USER, "Inbox", &mail(i));
    }
    let mut options = env.options(USER);
    options.page_size = 10;
    let client = env.client_with(options, Tokens::new(std::slice::from_ref(&env.token)));
    env.graph.inject(Fault::sync_state_not_found());
    env.graph.reset_requests();
    let err = client.delta(&inbox, None).await.expect_err("410 mid-round");
    assert!(err.is_resync(), "{err:?}");
    let statuses: Vec<u16> = env.graph.requests().iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        vec![200, 410],
        "the first page, then its nextLink"
    );
}

#[tokio::test]
async fn mime_is_byte_identical_and_capped() {
    let env = Env::new();
    let raw = common::mail_of_size(3, 300_000);
    let id = env.graph.deliver(USER, "Inbox", &raw);
    let client = env.client();
    let whole = client.fetch_mime(&id, 10 << 20).await.expect("mime");
    assert!(!whole.truncated);
    assert_eq!(whole.bytes, raw);
    let exact = client
        .fetch_mime(&id, raw.len() as u64)
        .await
        .expect("mime");
    assert!(!exact.truncated, "a mail exactly at the cap is whole");
    assert_eq!(exact.bytes, raw);
    let part = client.fetch_mime(&id, 1000).await.expect("partial");
    assert!(part.truncated);
    assert_eq!(part.bytes, raw[..1000]);

    env.graph.remove_message(USER, &id);
    let err = client.fetch_mime(&id, 1000).await.expect_err("gone");
    assert!(matches!(err, GraphError::MessageGone { .. }), "{err:?}");
}

#[tokio::test]
async fn never_more_than_four_in_flight_for_the_mailbox() {
    let env = Env::new();
    let mut raws = Vec::new();
    let mut ids = Vec::new();
    for i in 0..30 {
        let raw = mail(i);
        ids.push(env.graph.deliver(USER, "Inbox", &raw));
        raws.push(raw);
    }
    // Slow answers, so that requests overlap; Exchange's own limit, so a
    // fifth request in flight would be refused.
    env.graph
        .inject(Fault::delay(Duration::from_millis(60)).always());
    env.graph.set_concurrency_limit(Some(4), 1);
    let client = env.client();
    let other = env.client();
    let inbox = client.resolve_folder("inbox").await.expect("inbox");
    env.graph.reset_requests();
    // A second client of the same mailbox and a delta round at the same
    // time share the same bound.
    let (fetched, round, more) = tokio::join!(
        client.fetch_many(&ids, 1 << 20, 16),
        client.delta(&inbox, None),
        other.fetch_many(&ids[..8], 1 << 20, 4),
    );
    assert_eq!(fetched.len(), 30);
    for ((id, mime), (want_id, raw)) in fetched.iter().zip(ids.iter().zip(&raws)) {
        assert_eq!(id, want_id);
        assert_eq!(&mime.as_ref().expect("fetched").bytes, raw);
    }
    assert_eq!(round.expect("delta").items.len(), 30);
    assert!(more.iter().all(|(_, m)| m.is_ok()));
    assert_eq!(env.graph.max_in_flight(USER), 4);
    assert!(
        env.graph.requests().iter().all(|r| r.status != 429),
        "no request over Exchange's limit"
    );
    assert!(env.waits().is_empty(), "{:?}", env.waits());
}

#[tokio::test]
async fn throttling_honours_retry_after_and_is_told() {
    let env = Env::new();
    env.graph.deliver(USER, "Inbox", &mail(1));
    let client = env.client();
    let inbox = client.resolve_folder("inbox").await.expect("inbox");
    env.graph.reset_requests();
    env.graph
        .inject(Fault::throttle(1).on_route(GraphRoute::Delta).times(2));
    let started = Instant::now();
    let round = client.delta(&inbox, None).await.expect("after throttling");
    assert_eq!(round.items.len(), 1);
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let waits = env.waits();
    assert_eq!(waits.len(), 2);
    assert!(
        waits
            .iter()
            .all(|w| w.reason == WaitReason::Throttled && w.after == Duration::from_secs(1))
    );
    assert_eq!(
        waits[0].to_string(),
        "throttled by Microsoft Graph, retrying in 1s"
    );
    let statuses: Vec<u16> = env.graph.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![429, 429, 200]);
}

#[tokio::test]
async fn throttling_past_the_budget_returns_the_wait() {
    let env = Env::new();
    let client = env.client();
    let inbox = client.resolve_folder("inbox").await.expect("inbox");
    // Longer than the client may sleep: given back at once.
    env.graph
        .inject(Fault::throttle(30).on_route(GraphRoute::Delta));
    env.graph.reset_requests();
    let started = Instant::now();
    let err = client.delta(&inbox, None).await.expect_err("throttled");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(err.retry_after(), Some(Duration::from_secs(30)));
    assert_eq!(err.class(), FailureClass::Connection);
    assert!(
        err.to_string()
            .starts_with("throttled by Microsoft Graph, retrying in 30s"),
        "{err}"
    );
    assert_eq!(env.graph.total_requests(), 1);

    // Short waits, but more of them than the budget (3 retries).
    env.graph.clear_faults();
    env.graph
        .inject(Fault::throttle(1).on_route(GraphRoute::Delta).always());
    env.graph.reset_requests();
    let err = client.delta(&inbox, None).await.expect_err("throttled");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(1)));
    assert_eq!(env.graph.total_requests(), 4);
}

#[tokio::test]
async fn outages_and_dropped_connections_are_retried() {
    let env = Env::new();
    let raw = mail(5);
    let id = env.graph.deliver(USER, "Inbox", &raw);
    let client = env.client();

    env.graph.inject(
        Fault::unavailable(Some(1))
            .on_route(GraphRoute::MessageValue)
            .times(1),
    );
    env.graph.inject(
        Fault::error(
            500,
            "generalException",
            "General exception while processing.",
        )
        .on_route(GraphRoute::MessageValue)
        .times(1),
    );
    env.graph.inject(
        Fault::drop_connection()
            .on_route(GraphRoute::MessageValue)
            .times(1),
    );
    env.graph.reset_requests();
    let mime = client.fetch_mime(&id, 1 << 20).await.expect("after faults");
    assert_eq!(mime.bytes, raw);
    let reasons: Vec<WaitReason> = env.waits().iter().map(|w| w.reason).collect();
    assert_eq!(
        reasons,
        vec![
            WaitReason::Unavailable { status: 503 },
            WaitReason::Unavailable { status: 500 },
            WaitReason::ConnectionLost,
        ]
    );
    assert_eq!(
        env.waits()[0].after,
        Duration::from_secs(1),
        "503's Retry-After"
    );
    assert_eq!(env.graph.count(GraphRoute::MessageValue), 4);

    // An outage that outlasts the budget says what happened.
    env.graph.inject(
        Fault::error(502, "badGateway", "Bad gateway.")
            .on_route(GraphRoute::MessageValue)
            .always(),
    );
    let err = client.fetch_mime(&id, 1 << 20).await.expect_err("down");
    assert_eq!(
        err.to_string(),
        "Microsoft Graph answered HTTP 502 to fetching a message 4 times (badGateway: Bad gateway.); retried with backoff"
    );
    assert_eq!(err.class(), FailureClass::Connection);
}

#[tokio::test]
async fn a_refused_token_is_replaced_once() {
    let env = Env::new();
    let stale = env.idp.issue_access_token_with_scope(USER, GRAPH_SCOPE);
    env.idp.revoke_access_tokens();
    let fresh = env.idp.issue_access_token_with_scope(USER, GRAPH_SCOPE);
    let tokens = Tokens::new(&[stale.clone(), fresh]);
    let client = env.client_with(env.options(USER), tokens.clone());
    let inbox = client
        .resolve_folder("inbox")
        .await
        .expect("with the new token");
    assert_eq!(Some(inbox.id), env.graph.folder_id(USER, "inbox"));
    assert_eq!(tokens.refused.load(Ordering::SeqCst), 1);
    let statuses: Vec<u16> = env.graph.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![401, 200]);

    // Refused again after the refresh: the credential's fault.
    env.graph.reset_requests();
    let tokens = Tokens::new(std::slice::from_ref(&stale));
    let client = env.client_with(env.options(USER), tokens.clone());
    let err = client.resolve_folder("inbox").await.expect_err("refused");
    assert!(err.is_auth_rejected());
    assert_eq!(err.class(), FailureClass::Auth);
    assert!(
        err.to_string().contains("Lifetime validation failed"),
        "{err}"
    );
    assert_eq!(tokens.refused.load(Ordering::SeqCst), 1);
    assert_eq!(env.graph.total_requests(), 2);
    assert_no_token(&err.to_string(), &stale);
    assert_no_token(&format!("{err:?}"), &stale);

    // A token for Outlook, not Graph.
    let outlook = env.idp.issue_access_token_with_scope(USER, OUTLOOK_SCOPE);
    let client = env.client_with(env.options(USER), Tokens::new(&[outlook]));
    let err = client.resolve_folder("inbox").await.expect_err("audience");
    assert!(err.is_auth_rejected());
    assert!(err.to_string().contains("Invalid audience"), "{err}");
    assert!(
        err.to_string().contains("https://graph.microsoft.com"),
        "{err}"
    );
}

#[tokio::test]
async fn access_and_mailbox_errors_tell_the_admin_what_to_do() {
    let env = Env::new();
    // App-only, without the tenant's grant for the mailbox.
    let app = env.idp.issue_app_access_token(GRAPH_APP_SCOPE);
    let mut options = env.options(SHARED);
    options.app_only = true;
    let client = env.client_with(options.clone(), Tokens::new(std::slice::from_ref(&app)));
    let err = client.resolve_folder("inbox").await.expect_err("blocked");
    assert!(
        matches!(err, GraphError::AppAccessBlocked { .. }),
        "{err:?}"
    );
    assert!(err.is_misconfigured());
    let text = err.to_string();
    assert!(text.contains(SHARED), "{text}");
    assert!(text.contains("Access to OData is disabled"), "{text}");
    assert!(
        text.contains(
            "New-ManagementRoleAssignment -App <app id> -Role \"Application Mail.ReadWrite\""
        ),
        "{text}"
    );
    assert!(text.contains("New-ApplicationAccessPolicy"), "{text}");
    assert_no_token(&text, &app);
    // Granted: the same client gets in.
    env.idp.grant_app_access(SHARED);
    assert!(client.resolve_folder("inbox").await.is_ok());

    // Delegated, for a mailbox the user may not open.
    let client = env.client_with(
        env.options(SHARED),
        Tokens::new(std::slice::from_ref(&env.token)),
    );
    let err = client.resolve_folder("inbox").await.expect_err("denied");
    assert!(matches!(err, GraphError::AccessDenied { .. }), "{err:?}");
    assert!(err.is_misconfigured());
    assert!(err.to_string().contains("client_credentials"), "{err}");
    assert!(err.to_string().contains("Mail.ReadWrite"), "{err}");

    // Delegated without Mail.ReadWrite: reading works, marking read does not.
    let id = env.graph.deliver(USER, "Inbox", &mail(1));
    let read_only = env
        .idp
        .issue_access_token_with_scope(USER, "https://graph.microsoft.com/Mail.Read");
    let client = env.client_with(env.options(USER), Tokens::new(&[read_only]));
    assert!(client.fetch_mime(&id, 1000).await.is_ok());
    let err = client.mark_read(&id).await.expect_err("no Mail.ReadWrite");
    assert!(matches!(err, GraphError::AccessDenied { .. }), "{err:?}");

    // A mailbox that does not exist, and one not enabled for REST.
    let client = env.client_with(
        env.options("nobody@contoso.example"),
        Tokens::new(std::slice::from_ref(&env.token)),
    );
    let err = client
        .resolve_folder("inbox")
        .await
        .expect_err("no mailbox");
    assert!(err.is_misconfigured());
    assert!(err.to_string().contains("ErrorInvalidUser"), "{err}");
    assert!(err.to_string().contains("check `username`"), "{err}");
    env.graph.set_rest_enabled(USER, false);
    let err = env
        .client()
        .resolve_folder("inbox")
        .await
        .expect_err("not REST");
    assert!(err.is_misconfigured());
    assert!(
        err.to_string().contains("MailboxNotEnabledForRESTAPI"),
        "{err}"
    );
    assert!(err.to_string().contains("license"), "{err}");
}

#[tokio::test]
async fn after_steps_and_what_is_already_gone() {
    let env = Env::new();
    let a = env.graph.deliver(USER, "Inbox", &mail(1));
    let b = env.graph.deliver(USER, "Inbox", &mail(2));
    let c = env.graph.deliver(USER, "Inbox", &mail(3));
    let client = env.client();

    assert_eq!(client.mark_read(&a).await.expect("seen"), AfterStep::Done);
    assert_eq!(env.graph.message(USER, &a).map(|m| m.is_read), Some(true));

    let done = client.resolve_folder("Archive").await.expect("archive");
    assert_eq!(
        client.move_to(&b, &done).await.expect("move"),
        AfterStep::Done
    );
    let moved: Vec<String> = env
        .graph
        .messages(USER, "Archive")
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(moved, vec![b.clone()], "the immutable id survives the move");

    assert_eq!(client.delete(&c).await.expect("delete"), AfterStep::Done);
    assert!(env.graph.messages(USER, "Inbox").iter().all(|m| m.id != c));
    // Deleted for good from Deleted Items, then once more: already gone.
    assert_eq!(client.delete(&c).await.expect("delete"), AfterStep::Done);
    assert_eq!(
        client.delete(&c).await.expect("gone"),
        AfterStep::AlreadyGone
    );
    assert_eq!(
        client.mark_read(&c).await.expect("gone"),
        AfterStep::AlreadyGone
    );
    assert_eq!(
        client.move_to(&c, &done).await.expect("gone"),
        AfterStep::AlreadyGone
    );
    // A move to a folder id that does not exist is not "already gone".
    let err = client
        .move_to(&a, &FolderId::new("AAMkAGI2TnoSuchFolder"))
        .await
        .expect_err("bad destination");
    assert!(matches!(err, GraphError::NoMoveTarget { .. }), "{err:?}");
    assert!(err.is_misconfigured());
    assert_eq!(
        err.to_string(),
        format!(
            "the folder \"AAMkAGI2TnoSuchFolder\" to move mail to does not exist in mailbox {USER}; create it or fix `after`"
        )
    );
    assert_eq!(env.graph.message(USER, &a).map(|m| m.id), Some(a.clone()));
}

#[tokio::test]
async fn send_mail_posts_base64_mime_once() {
    let env = Env::new();
    let client = env.client();
    let raw = mail(9);
    client.send_mail(USER, &raw).await.expect("sent");
    let sent = env.graph.sent_mail();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].mailbox, USER.to_lowercase());
    assert_eq!(sent[0].mime.as_deref(), Some(raw.as_slice()));

    // Throttled: retried.
    env.graph
        .inject(Fault::throttle(1).on_route(GraphRoute::SendMail));
    client.send_mail(USER, &raw).await.expect("sent after 429");
    assert_eq!(env.graph.sent_mail().len(), 2);

    // Sent, then the answer lost: reported, never sent twice.
    env.graph
        .inject(Fault::drop_after_processing().on_route(GraphRoute::SendMail));
    let err = client.send_mail(USER, &raw).await.expect_err("uncertain");
    assert!(matches!(err, GraphError::SendUncertain { .. }), "{err:?}");
    assert!(
        err.to_string().contains("may or may not have been sent"),
        "{err}"
    );
    assert_eq!(env.graph.sent_mail().len(), 3);
}

#[tokio::test]
async fn no_token_in_any_error_or_debug_output() {
    let env = Env::new();
    // Tokens as long as Entra's, so that pieces could show.
    env.idp.set_access_token_len(1500);
    let token = env.idp.issue_access_token_with_scope(USER, GRAPH_SCOPE);
    let app = env.idp.issue_app_access_token(GRAPH_APP_SCOPE);
    let client = env.client_with(env.options(USER), Tokens::new(std::slice::from_ref(&token)));
    let mut errors: Vec<GraphError> = Vec::new();
    errors.push(
        client
            .resolve_folder("Inbox/Nope")
            .await
            .expect_err("missing"),
    );
    env.graph.inject(Fault::throttle(30));
    errors.push(client.resolve_folder("inbox").await.expect_err("throttled"));
    env.graph
        .inject(Fault::error(503, "serviceNotAvailable", &format!("echo {token}")).always());
    errors.push(client.resolve_folder("inbox").await.expect_err("down"));
    env.graph.clear_faults();
    env.graph.inject(Fault::error(
        400,
        "BadRequest",
        &format!("bad token {token}"),
    ));
    errors.push(client.resolve_folder("inbox").await.expect_err("echoed"));
    let app_client = env.client_with(env.options(SHARED), Tokens::new(std::slice::from_ref(&app)));
    errors.push(
        app_client
            .resolve_folder("inbox")
            .await
            .expect_err("blocked"),
    );
    env.idp.revoke_access_tokens();
    errors.push(client.resolve_folder("inbox").await.expect_err("refused"));
    assert_eq!(errors.len(), 6);
    for e in &errors {
        for t in [&token, &app] {
            assert_no_token(&e.to_string(), t);
            assert_no_token(&format!("{e:?}"), t);
        }
    }
    assert!(
        errors[3].to_string().contains("[redacted]"),
        "{}",
        errors[3]
    );
    assert_no_token(&format!("{client:?}"), &token);
}

#[tokio::test]
async fn only_the_named_ca_is_added_and_plain_http_stays_on_loopback() {
    let env = Env::new();
    // Without the test CA: the certificate is not trusted, said once.
    let mut options = env.options(USER);
    options.ca_file = None;
    let client = env.client_with(options, Tokens::new(std::slice::from_ref(&env.token)));
    let err = client.resolve_folder("inbox").await.expect_err("untrusted");
    assert!(
        err.to_string().contains("not trusted (unknown issuer)"),
        "{err}"
    );
    assert!(
        env.waits().is_empty(),
        "a certificate problem is not retried"
    );
    assert_eq!(env.graph.total_requests(), 0);

    // Plain HTTP on loopback (tls = "none").
    let plain = GraphServer::start_plain(&env.idp);
    plain.add_mailbox(USER);
    let mut options = env.options(USER);
    options.base_url = plain.url();
    let client = env.client_with(options, Tokens::new(std::slice::from_ref(&env.token)));
    let inbox = client.resolve_folder("inbox").await.expect("plain");
    assert_eq!(Some(inbox.id), plain.folder_id(USER, "inbox"));
}
