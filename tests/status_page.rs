//! The status page (`/` on `[daemon] listen`) in a real headless chromium
//! (Debian's, through chromedriver; `scripts/test` installs both), served
//! by the daemon binary reading a real Dovecot: it loads without a console
//! error, shows a failing reader's last error and the day's mail, keeps
//! mail content and addresses to itself, and fits a phone's width.
//! Screenshots are kept in target/test-artefacts/ for CI.

use mail2ticket_testkit as common;

use std::time::Duration;

use common::browser::{Browser, artefact_path};
use common::mail::{self, sender, subject};
use common::setup::{Env, USER, free_port, wait_until};

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread")]
async fn status_page_shows_readers_and_the_day_in_a_real_browser() {
    let env = Env::start();
    env.dovecot.deliver_many(USER, (0..3).map(mail::mail));
    let port = free_port();
    env.set_daemon_extra(&format!("listen = \"127.0.0.1:{port}\"\n"));
    let helpdesk = env.reader("helpdesk");
    let mut broken = env.reader("broken");
    // Nothing listens there: every poll fails with connection refused.
    broken.port = free_port();
    let config = env.config(&[helpdesk, broken]);
    // The database exists before the daemon does, so the test may poll it.
    env.init_db(&config).await;
    let _daemon = env.spawn_daemon_binary(&config.path);

    assert!(
        env.wait_for_tickets(3, WAIT).await,
        "the daemon did not make the 3 mails tickets"
    );
    assert!(
        wait_until(WAIT, || async {
            env.state("broken").await == "retrying" && env.last_error("broken").await.is_some()
        })
        .await,
        "the broken reader never failed"
    );
    let error = env.last_error("broken").await.expect("a last error");

    let browser = Browser::start(1280, 900).await;
    let url = format!("http://127.0.0.1:{port}/");
    browser.open(&url).await;
    assert_eq!(browser.title().await, "mail2ticket status");

    let shown = browser.text_of("tr[data-reader=\"broken\"] td.error").await;
    assert!(
        shown.starts_with(&error),
        "the page shows {shown:?} as the broken reader's error; the database has {error:?}"
    );
    let state = browser.text_of("tr[data-reader=\"helpdesk\"]").await;
    assert!(state.contains("ok"), "helpdesk row: {state}");
    let totals = browser.text_of("#mail-totals").await;
    assert!(
        totals.starts_with("3 mails in, 3 tickets opened"),
        "{totals}"
    );
    assert!(
        browser.text_of("#daemon").await.contains("running"),
        "the daemon section does not say it runs"
    );

    let source = browser.source().await;
    for secret in (0..3)
        .flat_map(|i| [subject(i), sender(i)])
        .chain([USER.to_string()])
    {
        assert!(!source.contains(&secret), "the page shows {secret:?}");
    }

    browser.screenshot(&artefact_path("status-page.png")).await;
    let console = browser.console().await;
    assert!(
        console.is_empty(),
        "the page left console messages: {console:#?}"
    );

    // A phone: nothing wider than the screen but the readers' own scroller.
    browser.resize(390, 844).await;
    browser.open(&url).await;
    let overflow = browser
        .eval("return document.documentElement.scrollWidth - window.innerWidth;")
        .await;
    assert!(
        overflow.as_i64().is_some_and(|px| px <= 0),
        "the page is {overflow} px wider than a phone's screen"
    );
    browser
        .screenshot(&artefact_path("status-page-phone.png"))
        .await;
    let console = browser.console().await;
    assert!(console.is_empty(), "console on the phone: {console:#?}");
}
