//! The Microsoft Graph stand-in, driven over HTTPS the way a reader would
//! drive Graph: delta rounds and links, `$value`, the after-steps,
//! sendMail, every refusal of the token checks, injected faults, the
//! in-flight count; and the IdP's refusal of a token request that names
//! two resources.

use mail2ticket_testkit as common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::certs::TestPki;
use common::idp_client::*;
use common::{Fault, GRAPH_APP_SCOPE, GRAPH_SCOPE, GraphRoute, GraphServer, IdP, OUTLOOK_SCOPE};
use reqwest::Method;
use serde_json::{Value, json};

const SHARED: &str = "helpdesk@contoso.example";
const IMMUTABLE: &str = "IdType=\"ImmutableId\"";

struct Env {
    idp: IdP,
    graph: GraphServer,
    client: reqwest::Client,
    token: String,
}

impl Env {
    /// An IdP with USER, a Graph stand-in on HTTPS with USER's and SHARED's
    /// mailboxes, a client trusting only the test CA, and a delegated Graph
    /// token for USER obtained over the token endpoint.
    async fn new() -> Env {
        let idp = IdP::start();
        idp.add_user(USER, PASSWORD);
        let pki = TestPki::generate(&["127.0.0.1", "localhost"]);
        let graph = GraphServer::start(&idp, &pki);
        graph.add_mailbox(USER);
        graph.add_mailbox(SHARED);
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(
                reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).expect("CA PEM"),
            )
            .build()
            .expect("HTTP client");
        let (status, body) = password_grant(&idp, USER, PASSWORD, GRAPH_SCOPE).await;
        assert_eq!(status, 200, "{body}");
        let token = body["access_token"].as_str().expect("token").to_owned();
        Env {
            idp,
            graph,
            client,
            token,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/v1.0/users/{USER}/{path}", self.graph.url())
    }

    async fn call(
        &self,
        method: Method,
        url: &str,
        token: Option<&str>,
        prefer: &[&str],
        body: Option<Value>,
    ) -> Reply {
        let mut req = self.client.request(method, url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        for p in prefer {
            req = req.header("Prefer", *p);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request failed at the HTTP level");
        Reply::read(resp).await
    }

    async fn get(&self, url: &str, prefer: &[&str]) -> Reply {
        self.call(Method::GET, url, Some(&self.token), prefer, None)
            .await
    }
}

struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    bytes: Vec<u8>,
    json: Value,
}

impl Reply {
    async fn read(resp: reqwest::Response) -> Reply {
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.expect("body").to_vec();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            bytes,
            json,
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn error_code(&self) -> &str {
        self.json["error"]["code"].as_str().unwrap_or_default()
    }

    fn error_message(&self) -> &str {
        self.json["error"]["message"].as_str().unwrap_or_default()
    }
}

/// Follows a delta round from `url` to its deltaLink: (items, deltaLink,
/// page sizes).
async fn delta_round(env: &Env, url: &str, prefer: &[&str]) -> (Vec<Value>, String, Vec<usize>) {
    let mut items = Vec::new();
    let mut sizes = Vec::new();
    let mut next = url.to_owned();
    loop {
        let r = env.get(&next, prefer).await;
        assert_eq!(r.status, 200, "{}", r.json);
        let value = r.json["value"].as_array().expect("value").clone();
        sizes.push(value.len());
        items.extend(value);
        if let Some(n) = r.json["@odata.nextLink"].as_str() {
            assert!(r.json.get("@odata.deltaLink").is_none());
            next = n.to_owned();
            continue;
        }
        let delta = r.json["@odata.deltaLink"]
            .as_str()
            .expect("the last page carries a deltaLink")
            .to_owned();
        return (items, delta, sizes);
    }
}

#[tokio::test]
async fn delta_pages_then_reports_only_changes() {
    let env = Env::new().await;
    let mut delivered = Vec::new();
    for i in 0..25 {
        delivered.push(env.graph.deliver(USER, "Inbox", &common::mail(i)));
    }
    env.graph.deliver(USER, "Archive", &common::mail(99));
    let select = "id,internetMessageId,receivedDateTime,isRead";
    let first = env.url(&format!(
        "mailFolders/inbox/messages/delta?$select={select}"
    ));
    let prefer = ["odata.maxpagesize=10", IMMUTABLE];

    // The first page: Graph's annotations, the preferences applied.
    let r = env.get(&first, &prefer).await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/json"))
    );
    let applied = r.header("preference-applied").expect("Preference-Applied");
    assert!(applied.contains("odata.maxpagesize=10"), "{applied}");
    assert!(applied.contains(IMMUTABLE), "{applied}");
    assert!(
        r.json["@odata.context"]
            .as_str()
            .is_some_and(|c| c.ends_with("$metadata#Collection(message)"))
    );
    let next = r.json["@odata.nextLink"].as_str().expect("nextLink");
    assert!(next.contains("$skiptoken="), "{next}");
    let item = &r.json["value"][0];
    let mut keys: Vec<&str> = item
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "@odata.etag",
            "@odata.type",
            "id",
            "internetMessageId",
            "isRead",
            "receivedDateTime"
        ],
        "only what $select names, plus the annotations"
    );
    assert_eq!(item["internetMessageId"], common::message_id(0));
    assert_eq!(item["isRead"], false);
    assert!(
        item["receivedDateTime"]
            .as_str()
            .is_some_and(|t| t.len() == 20 && t.ends_with('Z'))
    );

    // A page fetched again (its answer lost) is the same page, same links.
    let again = env.get(&first, &prefer).await;
    assert_ne!(
        again.json["@odata.nextLink"], r.json["@odata.nextLink"],
        "a new request without a token starts a new round"
    );
    let page2 = env.get(next, &prefer).await;
    let page2_again = env.get(next, &prefer).await;
    assert_eq!(page2.json["value"], page2_again.json["value"]);
    assert_eq!(
        page2.json["@odata.nextLink"],
        page2_again.json["@odata.nextLink"]
    );

    // The whole round: 10 + 10 + 5, every Inbox mail once, by immutable id.
    let (items, delta_link, sizes) = delta_round(&env, &first, &prefer).await;
    assert_eq!(sizes, [10, 10, 5]);
    let ids: Vec<&str> = items
        .iter()
        .map(|i| i["id"].as_str().expect("id"))
        .collect();
    assert_eq!(
        ids,
        delivered.iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert!(delta_link.contains("$deltatoken="), "{delta_link}");

    // Steady state: one request, nothing new, a deltaLink again.
    let before = env.graph.count(GraphRoute::Delta);
    let r = env.get(&delta_link, &prefer).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json["value"], json!([]));
    let quiet_link = r.json["@odata.deltaLink"].as_str().expect("deltaLink");
    assert!(r.json.get("@odata.nextLink").is_none());
    assert_eq!(env.graph.count(GraphRoute::Delta), before + 1);

    // Changes: two new mails, one read in Outlook, one moved to Archive,
    // one deleted for good; a mail in another folder changes nothing here.
    let new_a = env.graph.deliver(USER, "Inbox", &common::mail(25));
    let new_b = env.graph.deliver(USER, "Inbox", &common::mail(26));
    env.graph.set_read(USER, &delivered[3], true);
    env.graph.move_message(USER, &delivered[4], "Archive");
    env.graph.remove_message(USER, &delivered[5]);
    env.graph.deliver(USER, "Archive", &common::mail(100));

    let (items, next_delta, _) = delta_round(&env, quiet_link, &prefer).await;
    assert_eq!(items.len(), 5, "{items:?}");
    let by_id = |id: &str| {
        items
            .iter()
            .find(|i| i["id"] == id)
            .unwrap_or_else(|| panic!("{id} not in {items:?}"))
            .clone()
    };
    assert_eq!(by_id(&new_a)["internetMessageId"], common::message_id(25));
    assert_eq!(by_id(&new_b)["internetMessageId"], common::message_id(26));
    assert_eq!(by_id(&delivered[3])["isRead"], true);
    assert!(by_id(&delivered[3]).get("@removed").is_none());
    assert_eq!(
        by_id(&delivered[4])["@removed"],
        json!({"reason": "changed"}),
        "moved out: still restorable"
    );
    assert_eq!(
        by_id(&delivered[5])["@removed"],
        json!({"reason": "deleted"})
    );

    // The old link still answers the same changes (a client that lost the
    // new one); the new one answers nothing.
    let (replay, _, _) = delta_round(&env, quiet_link, &prefer).await;
    assert_eq!(replay.len(), 5);
    let (none, _, _) = delta_round(&env, &next_delta, &prefer).await;
    assert!(none.is_empty(), "{none:?}");

    // The request log knows the client asked for immutable ids.
    let deltas: Vec<_> = env
        .graph
        .requests()
        .into_iter()
        .filter(|r| r.route == GraphRoute::Delta)
        .collect();
    assert!(deltas.iter().all(|r| r.prefers_immutable_ids()));
    assert!(deltas.iter().all(|r| r.status == 200));
    assert_eq!(env.graph.count_for(USER, GraphRoute::Delta), deltas.len());
    assert_eq!(env.graph.count_for(SHARED, GraphRoute::Delta), 0);
}

#[tokio::test]
async fn default_page_size_select_errors_and_rest_ids() {
    let env = Env::new().await;
    for i in 0..12 {
        env.graph.deliver(USER, "Inbox", &common::mail(i));
    }
    // Without odata.maxpagesize, pages of 10; without $select, the full
    // message; without ImmutableId, REST ids that a move changes.
    let url = env.url("mailFolders/inbox/messages/delta");
    let (items, _, sizes) = delta_round(&env, &url, &[]).await;
    assert_eq!(sizes, [10, 2]);
    assert_eq!(items[0]["subject"], common::mail::subject(0));
    assert!(items[0]["parentFolderId"].is_string());
    let stored = env.graph.messages(USER, "Inbox");
    assert_eq!(items[0]["id"], stored[0].rest_id.as_str());
    assert_ne!(stored[0].rest_id, stored[0].id);

    let r = env
        .get(
            &env.url("mailFolders/inbox/messages/delta?$select=id,isread,subjct"),
            &[],
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code(), "RequestBroker--ParseUri");
    assert!(r.error_message().contains("'subjct'"), "{}", r.json);

    // A move without ImmutableId: a new REST id; the immutable id stays.
    let r = env
        .call(
            Method::POST,
            &env.url(&format!("messages/{}/move", stored[0].rest_id)),
            Some(&env.token),
            &[],
            Some(json!({"destinationId": "archive"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.json);
    let moved = env.graph.message(USER, &stored[0].id).expect("still there");
    assert_eq!(r.json["id"], moved.rest_id.as_str());
    assert_ne!(moved.rest_id, stored[0].rest_id);
    assert_eq!(moved.folder_path, "Archive");
    assert!(
        env.graph
            .requests()
            .iter()
            .all(|r| !r.prefers_immutable_ids()),
        "this client never asked"
    );
}

#[tokio::test]
async fn value_and_after_steps() {
    let env = Env::new().await;
    let support = env.graph.add_folder(USER, "Inbox/Support");
    // Bytes that are not UTF-8 and bare CRs must come back untouched.
    let mut raw = common::mail(1);
    raw.extend_from_slice(b"\r\n\xff\xfe binary \r tail\r\n");
    let id = env.graph.deliver(USER, "Inbox", &raw);
    let id2 = env.graph.deliver(USER, "Inbox", &common::mail(2));
    let id3 = env.graph.deliver(USER, "Inbox", &common::mail(3));

    let r = env
        .get(&env.url(&format!("messages/{id}/$value")), &[IMMUTABLE])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.bytes, raw);

    let r = env
        .get(
            &env.url(&format!(
                "messages/{id}?$select=internetMessageId,isRead,parentFolderId"
            )),
            &[IMMUTABLE],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json["internetMessageId"], common::message_id(1));
    assert_eq!(
        r.json["parentFolderId"].as_str(),
        env.graph.folder_id(USER, "inbox").as_deref()
    );
    assert!(r.json.get("subject").is_none());

    // Seen.
    let r = env
        .call(
            Method::PATCH,
            &env.url(&format!("messages/{id}")),
            Some(&env.token),
            &[IMMUTABLE],
            Some(json!({"isRead": true})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(r.json["isRead"], true);
    assert!(env.graph.message(USER, &id).expect("message").is_read);
    let r = env
        .call(
            Method::PATCH,
            &env.url(&format!("messages/{id}")),
            Some(&env.token),
            &[],
            Some(json!({"isRead": "yes"})),
        )
        .await;
    assert_eq!(r.status, 400);

    // Move to a child folder found the way a client finds "Inbox/Support".
    let r = env
        .get(
            &env.url("mailFolders/inbox/childFolders?$filter=displayName eq 'support'"),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(r.json["value"].as_array().map(Vec::len), Some(1));
    assert_eq!(r.json["value"][0]["id"], support.as_str());
    assert_eq!(r.json["value"][0]["displayName"], "Support");
    let r = env
        .call(
            Method::POST,
            &env.url(&format!("messages/{id2}/move")),
            Some(&env.token),
            &[IMMUTABLE],
            Some(json!({"destinationId": support})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.json);
    assert_eq!(r.json["id"], id2.as_str(), "immutable ids survive a move");
    assert_eq!(r.json["parentFolderId"], support.as_str());
    assert_eq!(
        env.graph.messages(USER, "Inbox/Support")[0].internet_message_id,
        common::message_id(2)
    );
    // A folder that does not exist: by display name (not an id) and by id.
    let r = env
        .call(
            Method::POST,
            &env.url(&format!("messages/{id3}/move")),
            Some(&env.token),
            &[],
            Some(json!({"destinationId": "Support"})),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code(), "ErrorInvalidIdMalformed");
    let r = env
        .get(&env.url("mailFolders/AQMkADAwATM0MDAAnothere"), &[])
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code(), "ErrorItemNotFound");

    // Delete: into Deleted Items, then gone.
    let r = env
        .call(
            Method::DELETE,
            &env.url(&format!("messages/{id3}")),
            Some(&env.token),
            &[IMMUTABLE],
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    assert!(r.bytes.is_empty());
    assert_eq!(
        env.graph
            .message(USER, &id3)
            .expect("restorable")
            .folder_path,
        "Deleted Items"
    );
    let r = env
        .call(
            Method::DELETE,
            &env.url(&format!("messages/{id3}")),
            Some(&env.token),
            &[IMMUTABLE],
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    assert!(env.graph.message(USER, &id3).is_none());
    let r = env
        .get(&env.url(&format!("messages/{id3}/$value")), &[])
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code(), "ErrorItemNotFound");
    assert!(r.header("request-id").is_some());
    assert!(r.json["error"]["innerError"]["request-id"].is_string());
}

#[tokio::test]
async fn folder_listing_pages_and_filters() {
    let env = Env::new().await;
    for i in 0..6 {
        env.graph.add_folder(USER, &format!("Project {i}"));
    }
    env.graph.add_folder(USER, "Project 0/Sub");
    let r = env.get(&env.url("mailFolders"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json["value"].as_array().map(Vec::len), Some(10));
    let next = r.json["@odata.nextLink"]
        .as_str()
        .expect("12 folders, pages of 10");
    let r2 = env.get(next, &[]).await;
    assert_eq!(r2.json["value"].as_array().map(Vec::len), Some(2));
    assert!(r2.json.get("@odata.nextLink").is_none());
    let names: HashSet<String> = r.json["value"]
        .as_array()
        .into_iter()
        .chain(r2.json["value"].as_array())
        .flatten()
        .map(|f| f["displayName"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(names.contains("Inbox") && names.contains("Deleted Items"));
    assert!(names.contains("Project 5"));
    assert!(!names.contains("Sub"), "children are not top-level");

    let r = env
        .get(
            &env.url("mailFolders?$filter=displayName eq 'project 0'"),
            &[],
        )
        .await;
    let project0 = r.json["value"][0]["id"].as_str().expect("found").to_owned();
    assert_eq!(r.json["value"][0]["childFolderCount"], 1);
    let r = env
        .get(
            &env.url(&format!("mailFolders/{project0}/childFolders")),
            &[],
        )
        .await;
    assert_eq!(r.json["value"][0]["displayName"], "Sub");
    let r = env
        .get(
            &env.url("mailFolders?$filter=startswith(displayName,'P')"),
            &[],
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code(), "ErrorInvalidUrlQueryFilter");

    let r = env.get(&env.url("mailFolders/Inbox"), &[]).await;
    assert_eq!(r.status, 200, "well-known names are case-insensitive");
    assert_eq!(
        r.json["id"].as_str(),
        env.graph.folder_id(USER, "inbox").as_deref()
    );
    assert_eq!(r.json["displayName"], "Inbox");
    let r = env.get(&env.url("mailFolders/Project%200"), &[]).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code(), "ErrorInvalidIdMalformed");
}

#[tokio::test]
async fn send_mail_is_captured() {
    let env = Env::new().await;
    let mime = common::mail(7);
    // Wrapped base64 as some encoders write it.
    let encoded = STANDARD.encode(&mime);
    let wrapped: String = encoded
        .as_bytes()
        .chunks(76)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join("\r\n");
    let send = |token: String, body: String, content_type: &'static str| {
        let req = env
            .client
            .post(env.url("sendMail"))
            .bearer_auth(token)
            .header("Content-Type", content_type)
            .body(body);
        async move { Reply::read(req.send().await.expect("send")).await }
    };
    let r = send(env.token.clone(), wrapped, "text/plain").await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.bytes));
    let sent = env.graph.sent_mail();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].mailbox, USER);
    assert_eq!(sent[0].mime.as_deref(), Some(mime.as_slice()));
    let copies = env.graph.messages(USER, "sentitems");
    assert_eq!(copies.len(), 1);
    assert_eq!(copies[0].internet_message_id, common::message_id(7));
    assert!(copies[0].is_read);

    let r = send(env.token.clone(), "not base64!".to_owned(), "text/plain").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code(), "ErrorMimeContentInvalidBase64String");

    // A token without Mail.Send may read but not send.
    let (_, body) = password_grant(
        &env.idp,
        USER,
        PASSWORD,
        "https://graph.microsoft.com/Mail.ReadWrite offline_access",
    )
    .await;
    let read_only = body["access_token"].as_str().expect("token").to_owned();
    let r = send(read_only.clone(), encoded, "text/plain").await;
    assert_eq!(r.status, 403);
    assert_eq!(r.error_code(), "ErrorAccessDenied");
    assert_eq!(env.graph.sent_mail().len(), 1);
    let r = env
        .call(
            Method::GET,
            &env.url("mailFolders/inbox"),
            Some(&read_only),
            &[],
            None,
        )
        .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn token_and_mailbox_refusals() {
    let env = Env::new().await;
    env.idp.add_user("bob@contoso.example", "pw");
    env.graph.deliver(SHARED, "Inbox", &common::mail(1));
    let inbox = env.url("mailFolders/inbox");
    let assert_401 = |r: &Reply, message: &str| {
        assert_eq!(r.status, 401, "{}", r.json);
        assert_eq!(r.error_code(), "InvalidAuthenticationToken");
        assert!(r.error_message().starts_with(message), "{}", r.json);
        let challenge = r.header("www-authenticate").expect("WWW-Authenticate");
        assert!(challenge.starts_with("Bearer "), "{challenge}");
        assert!(challenge.contains(&env.idp.authorize_url()), "{challenge}");
    };

    let r = env.call(Method::GET, &inbox, None, &[], None).await;
    assert_401(&r, "Access token is empty.");
    let r = env
        .call(Method::GET, &inbox, Some("made-up-token"), &[], None)
        .await;
    assert_401(&r, "IDX14100: JWT is not well formed");

    // An Outlook token (IMAP/POP scope) is for another audience.
    let (_, body) = password_grant(&env.idp, USER, PASSWORD, OUTLOOK_SCOPE).await;
    let outlook = body["access_token"].as_str().expect("token");
    let r = env
        .call(Method::GET, &inbox, Some(outlook), &[], None)
        .await;
    assert_401(&r, "Access token validation failure. Invalid audience.");

    // Someone else's mailbox, then the same as a delegate.
    let bob = env
        .idp
        .issue_access_token_with_scope("bob@contoso.example", GRAPH_SCOPE);
    let shared_inbox = format!("{}/v1.0/users/{SHARED}/mailFolders/inbox", env.graph.url());
    let r = env
        .call(Method::GET, &shared_inbox, Some(&bob), &[], None)
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.error_code(), "ErrorAccessDenied");
    assert_eq!(
        r.error_message(),
        "Access is denied. Check credentials and try again."
    );
    env.graph
        .grant_mailbox_access(SHARED, "Bob@Contoso.example");
    let r = env
        .call(Method::GET, &shared_inbox, Some(&bob), &[], None)
        .await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(r.json["totalItemCount"], 1);

    // App-only: refused until the IdP grants the app the mailbox.
    env.idp.set_client_secret("s3cret");
    let (status, _, body) = post_token(
        &env.idp,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", env.idp.client_id()),
            ("client_secret", "s3cret"),
            ("scope", GRAPH_APP_SCOPE),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let app = body["access_token"].as_str().expect("token").to_owned();
    let r = env
        .call(Method::GET, &shared_inbox, Some(&app), &[], None)
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.error_code(), "ErrorAccessDenied");
    assert_eq!(
        r.error_message(),
        "Access to OData is disabled: [RAOP] : Blocked by tenant configured AppOnly AccessPolicy settings."
    );
    env.idp.grant_app_access(SHARED);
    let r = env
        .call(Method::GET, &shared_inbox, Some(&app), &[], None)
        .await;
    assert_eq!(r.status, 200, "{}", r.json);
    let r = env
        .call(
            Method::GET,
            &format!("{}/v1.0/me/mailFolders/inbox", env.graph.url()),
            Some(&app),
            &[],
            None,
        )
        .await;
    assert_eq!(r.status, 400, "/me needs a user");

    // /me with a delegated token is the user's own mailbox.
    let r = env
        .call(
            Method::GET,
            &format!("{}/v1.0/me/mailFolders/inbox", env.graph.url()),
            Some(&env.token),
            &[],
            None,
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json["id"].as_str(),
        env.graph.folder_id(USER, "inbox").as_deref()
    );

    // No such mailbox; a mailbox Graph cannot serve.
    let r = env
        .call(
            Method::GET,
            &format!(
                "{}/v1.0/users/nobody@contoso.example/mailFolders/inbox",
                env.graph.url()
            ),
            Some(&app),
            &[],
            None,
        )
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code(), "ErrorInvalidUser");
    assert_eq!(
        r.error_message(),
        "The requested user 'nobody@contoso.example' is invalid."
    );
    env.graph.set_rest_enabled(SHARED, false);
    let r = env
        .call(Method::GET, &shared_inbox, Some(&app), &[], None)
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code(), "MailboxNotEnabledForRESTAPI");

    // Expired (revoked) tokens, last: it ends every token so far.
    env.idp.revoke_access_tokens();
    let r = env.get(&inbox, &[]).await;
    assert_401(&r, "Lifetime validation failed, the token is expired.");

    let statuses: Vec<u16> = env.graph.requests().iter().map(|r| r.status).collect();
    assert!(statuses.iter().all(|s| *s != 0), "{statuses:?}");
}

#[tokio::test]
async fn throttling_outages_drops_and_delays() {
    let env = Env::new().await;
    let id = env.graph.deliver(USER, "Inbox", &common::mail(1));
    let value = env.url(&format!("messages/{id}/$value"));
    let inbox = env.url("mailFolders/inbox");

    // The next two $value requests are throttled; folders are not.
    env.graph.inject(
        Fault::throttle(7)
            .times(2)
            .on_route(GraphRoute::MessageValue),
    );
    assert_eq!(env.get(&inbox, &[]).await.status, 200);
    for _ in 0..2 {
        let r = env.get(&value, &[]).await;
        assert_eq!(r.status, 429);
        assert_eq!(r.header("retry-after"), Some("7"));
        assert_eq!(r.error_code(), "ApplicationThrottled");
        assert!(r.error_message().contains("MailboxConcurrency"));
    }
    assert_eq!(env.get(&value, &[]).await.status, 200);
    assert_eq!(env.graph.pending_faults(), 0);

    // One in ten, deterministically: the 10th, 20th and 30th.
    env.graph
        .inject(Fault::throttle(1).ratio(1, 10).for_mailbox(USER));
    let mut throttled = Vec::new();
    for n in 1..=30 {
        if env.get(&value, &[]).await.status == 429 {
            throttled.push(n);
        }
    }
    assert_eq!(throttled, [10, 20, 30]);
    env.graph.clear_faults();
    env.graph.inject(Fault::throttle(1).ratio(3, 10));
    let mut throttled = Vec::new();
    for n in 1..=10 {
        if env.get(&value, &[]).await.status == 429 {
            throttled.push(n);
        }
    }
    assert_eq!(throttled, [4, 7, 10], "evenly spread");
    env.graph.clear_faults();

    // 503 with Retry-After, once.
    env.graph.inject(Fault::unavailable(Some(3)));
    let r = env.get(&inbox, &[]).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("3"));
    assert_eq!(r.error_code(), "serviceNotAvailable");
    assert_eq!(env.get(&inbox, &[]).await.status, 200);

    // A dropped connection: no answer at all, and nothing happened.
    env.graph
        .inject(Fault::drop_connection().on_route(GraphRoute::UpdateMessage));
    let patch = env
        .client
        .patch(env.url(&format!("messages/{id}")))
        .bearer_auth(&env.token)
        .json(&json!({"isRead": true}))
        .send()
        .await;
    assert!(patch.is_err(), "{patch:?}");
    assert!(!env.graph.message(USER, &id).expect("message").is_read);
    // Dropped after taking effect: no answer, but the mail is read.
    env.graph
        .inject(Fault::drop_after_processing().on_route(GraphRoute::UpdateMessage));
    let patch = env
        .client
        .patch(env.url(&format!("messages/{id}")))
        .bearer_auth(&env.token)
        .json(&json!({"isRead": true}))
        .send()
        .await;
    assert!(patch.is_err(), "{patch:?}");
    assert!(env.graph.message(USER, &id).expect("message").is_read);
    let dropped = env
        .graph
        .requests()
        .iter()
        .filter(|r| r.route == GraphRoute::UpdateMessage && r.status == 0)
        .count();
    assert_eq!(dropped, 2);

    // Slow answers.
    env.graph
        .inject(Fault::delay(Duration::from_millis(400)).on_route(GraphRoute::GetFolder));
    let t = Instant::now();
    assert_eq!(env.get(&inbox, &[]).await.status, 200);
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );

    // Any status and body.
    env.graph
        .inject(Fault::error(500, "generalException", "General error."));
    let r = env.get(&inbox, &[]).await;
    assert_eq!(r.status, 500);
    assert_eq!(r.error_code(), "generalException");
}

#[tokio::test]
async fn expired_delta_state_answers_410() {
    let env = Env::new().await;
    for i in 0..15 {
        env.graph.deliver(USER, "Inbox", &common::mail(i));
    }
    let first = env.url("mailFolders/inbox/messages/delta?$select=id,isRead");
    let (_, delta_link, _) = delta_round(&env, &first, &[IMMUTABLE]).await;
    let r = env.get(&first, &[IMMUTABLE]).await;
    let next_link = r.json["@odata.nextLink"]
        .as_str()
        .expect("nextLink")
        .to_owned();

    // Injected once, on a request carrying a token only.
    env.graph.inject(Fault::sync_state_not_found());
    assert_eq!(env.get(&first, &[IMMUTABLE]).await.status, 200);
    let r = env.get(&delta_link, &[IMMUTABLE]).await;
    assert_eq!(r.status, 410);
    assert_eq!(r.error_code(), "SyncStateNotFound");
    assert!(
        r.error_message()
            .starts_with("The sync state generation is not found")
    );
    assert_eq!(env.get(&delta_link, &[IMMUTABLE]).await.status, 200);

    // Exchange evicts the sync state: every link so far is gone.
    env.graph.expire_delta_tokens(Some(USER));
    for link in [&delta_link, &next_link] {
        let r = env.get(link, &[IMMUTABLE]).await;
        assert_eq!(r.status, 410, "{link}");
        assert_eq!(r.error_code(), "SyncStateNotFound");
    }
    // A full resync works and gives a working link.
    let (items, fresh, _) = delta_round(&env, &first, &[IMMUTABLE]).await;
    assert_eq!(items.len(), 15);
    let r = env.get(&fresh, &[IMMUTABLE]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json["value"], json!([]));

    // A token the server never issued.
    let bogus = env.url("mailFolders/inbox/messages/delta?$deltatoken=nonsense");
    let r = env.get(&bogus, &[]).await;
    assert_eq!(r.status, 410);
}

#[tokio::test]
async fn in_flight_counting_and_concurrency_limit() {
    let env = Env::new().await;
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(env.graph.deliver(USER, "Inbox", &common::mail(i)));
    }
    env.graph.inject(
        Fault::delay(Duration::from_millis(300))
            .on_route(GraphRoute::MessageValue)
            .always(),
    );
    let urls: Vec<String> = ids
        .iter()
        .map(|id| env.url(&format!("messages/{id}/$value")))
        .collect();
    let statuses = fetch_concurrently(&env, &urls).await;
    assert_eq!(statuses, [200; 6]);
    assert_eq!(env.graph.max_in_flight(USER), 6);
    assert_eq!(env.graph.in_flight(USER), 0);
    assert_eq!(env.graph.max_in_flight(SHARED), 0);

    // Exchange's limit of 4 per mailbox: the two beyond it are throttled.
    env.graph.reset_requests();
    env.graph.set_concurrency_limit(Some(4), 1);
    let statuses = fetch_concurrently(&env, &urls).await;
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        4,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        2,
        "{statuses:?}"
    );
    let throttled: Vec<_> = env
        .graph
        .requests()
        .into_iter()
        .filter(|r| r.status == 429)
        .collect();
    assert_eq!(throttled.len(), 2);
    assert_eq!(env.graph.in_flight(USER), 0);
}

/// GETs every URL at once (one task each); the statuses in URL order.
async fn fetch_concurrently(env: &Env, urls: &[String]) -> Vec<u16> {
    let mut set = tokio::task::JoinSet::new();
    for (i, url) in urls.iter().enumerate() {
        let req = env.client.get(url).bearer_auth(&env.token);
        set.spawn(async move {
            let status = req.send().await.map(|r| r.status().as_u16());
            (i, status.expect("request failed at the HTTP level"))
        });
    }
    let mut out = vec![0; urls.len()];
    while let Some(done) = set.join_next().await {
        let (i, status) = done.expect("request task");
        out[i] = status;
    }
    out
}

#[tokio::test]
async fn idp_refuses_mixed_resources_and_tells_audiences() {
    let idp = IdP::start();
    idp.add_user(USER, PASSWORD);
    let mixed = "https://graph.microsoft.com/Mail.ReadWrite https://outlook.office.com/IMAP.AccessAsUser.All offline_access";
    let (status, body) = password_grant(&idp, USER, PASSWORD, mixed).await;
    assert_eq!(status, 400);
    assert_aad_error(&body, "invalid_scope", 28000);
    assert!(
        body["error_description"]
            .as_str()
            .is_some_and(|d| d.contains("contains more than one resource")),
        "{body}"
    );
    assert!(idp.issued_access_tokens().is_empty());

    // Two spellings of Exchange Online are one resource.
    let (status, body) = password_grant(
        &idp,
        USER,
        PASSWORD,
        "https://outlook.office.com/IMAP.AccessAsUser.All https://outlook.office365.com/SMTP.Send offline_access",
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // One refresh token, one resource at a time.
    let (status, body) = password_grant(&idp, USER, PASSWORD, GRAPH_SCOPE).await;
    assert_eq!(status, 200, "{body}");
    let graph_token = body["access_token"].as_str().expect("token").to_owned();
    let rt = body["refresh_token"]
        .as_str()
        .expect("refresh token")
        .to_owned();
    let (status, outlook) = refresh(&idp, &rt, Some(OUTLOOK_SCOPE)).await;
    assert_eq!(status, 200, "{outlook}");
    let (status, again) = refresh(&idp, &rt, Some(GRAPH_SCOPE)).await;
    assert_eq!(status, 200, "{again}");
    let (status, refused) = refresh(&idp, &rt, Some(mixed)).await;
    assert_eq!(status, 400);
    assert_aad_error(&refused, "invalid_scope", 28000);

    // What other stand-ins learn about each token.
    let info = idp.access_token_info(&graph_token).expect("issued");
    assert_eq!(info.audience, "https://graph.microsoft.com");
    assert_eq!(info.subject, common::TokenSubject::User(USER.to_owned()));
    assert_eq!(
        info.scope,
        "https://graph.microsoft.com/Mail.ReadWrite https://graph.microsoft.com/Mail.Send"
    );
    assert!(!info.expired);
    assert!(info.has_permission("mail.send"));
    assert!(!info.has_permission("Mail.Read"));
    let info = idp
        .access_token_info(outlook["access_token"].as_str().expect("token"))
        .expect("issued");
    assert_eq!(info.audience, "https://outlook.office.com");
    let app = idp.issue_app_access_token("https://outlook.office365.com/.default");
    let info = idp.access_token_info(&app).expect("issued");
    assert_eq!(info.subject, common::TokenSubject::App);
    assert_eq!(info.audience, "https://outlook.office.com");
    assert!(info.has_permission("Mail.ReadWrite"), ".default holds all");
    assert!(idp.access_token_info("never-issued").is_none());
    idp.revoke_access_tokens();
    assert!(idp.access_token_info(&graph_token).expect("issued").expired);

    // The device code endpoint refuses a mixed scope up front.
    let resp = reqwest::Client::new()
        .post(idp.device_code_url())
        .form(&[("client_id", idp.client_id()), ("scope", mixed)])
        .send()
        .await
        .expect("devicecode");
    assert_eq!(resp.status().as_u16(), 400);
    let body: Value = resp.json().await.expect("json");
    assert_aad_error(&body, "invalid_scope", 28000);
}

#[tokio::test]
async fn plain_http_for_loopback_without_tls() {
    let idp = IdP::start();
    idp.add_user(USER, PASSWORD);
    let graph = GraphServer::start_plain(&idp);
    assert!(graph.url().starts_with("http://127.0.0.1:"));
    assert!(!graph.is_tls());
    assert_eq!(graph.host(), "127.0.0.1");
    graph.add_mailbox(USER);
    let id = graph.deliver(USER, "inbox", &common::mail(3));
    let token = idp.issue_access_token_with_scope(USER, GRAPH_SCOPE);
    let resp = reqwest::Client::new()
        .get(format!(
            "{}/v1.0/users/{}/messages/{id}/%24value",
            graph.url(),
            USER.to_uppercase().replace('@', "%40")
        ))
        .bearer_auth(token)
        .send()
        .await
        .expect("GET");
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.bytes().await.expect("body").to_vec(), common::mail(3));
    assert_eq!(graph.count_for(USER, GraphRoute::MessageValue), 1);
    assert_eq!(graph.requests()[0].mailbox.as_deref(), Some(USER));
}

#[tokio::test]
async fn message_listing_pages_filters_and_counts() {
    let env = Env::new().await;
    let mut ids = Vec::new();
    for i in 0..13 {
        ids.push(env.graph.deliver(USER, "Inbox", &common::mail(i)));
    }
    env.graph.set_read(USER, &ids[0], true);
    let r = env
        .get(
            &env.url("mailFolders/inbox/messages?$filter=isRead eq false&$count=true&$select=internetMessageId"),
            &[IMMUTABLE],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(r.json["@odata.count"], 12, "unread mail, for `check`");
    let page = r.json["value"].as_array().expect("value");
    assert_eq!(page.len(), 10);
    assert_eq!(page[0]["id"], ids[12].as_str(), "newest first");
    assert!(page[0].get("subject").is_none());
    let next = r.json["@odata.nextLink"].as_str().expect("nextLink");
    let r = env.get(next, &[IMMUTABLE]).await;
    let rest: Vec<&str> = r.json["value"]
        .as_array()
        .expect("value")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(rest, [ids[2].as_str(), ids[1].as_str()]);
    assert!(r.json.get("@odata.nextLink").is_none());

    let r = env
        .get(
            &env.url("mailFolders/inbox/messages?$filter=subject eq 'x'"),
            &[],
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code(), "ErrorInvalidUrlQueryFilter");
}
