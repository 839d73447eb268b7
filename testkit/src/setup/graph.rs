//! A test environment with a Microsoft Graph stand-in beside the IdP: the
//! usual [`Env`] (its Dovecot unused by Graph readers), a [`GraphServer`]
//! on HTTPS with a certificate from its own test CA, the mailbox [`USER`],
//! and reader entries that point a `protocol = "graph"` reader at it.

use std::path::PathBuf;

use super::{Env, ReaderSpec, USER};
use crate::GraphServer;
use crate::certs::TestPki;

pub struct GraphEnv {
    pub env: Env,
    pub graph: GraphServer,
    /// The stand-in's CA, which Graph readers trust (`ca_file`).
    pub ca_file: PathBuf,
}

impl GraphEnv {
    pub fn start() -> GraphEnv {
        let env = Env::start();
        let pki = TestPki::generate(&["127.0.0.1", "localhost"]);
        let graph = GraphServer::start(&env.idp, &pki);
        graph.add_mailbox(USER);
        let ca_file = env.path("graph-ca.pem");
        std::fs::write(&ca_file, &pki.ca_pem).expect("write the Graph CA");
        GraphEnv {
            env,
            graph,
            ca_file,
        }
    }

    /// A delegated Graph reader of [`USER`]'s Inbox (password grant, as
    /// the IMAP readers of [`Env::reader`]).
    pub fn reader(&self, name: &str) -> ReaderSpec {
        ReaderSpec {
            protocol: "graph",
            host: "127.0.0.1".into(),
            port: self.graph.port(),
            // The Dovecot CA is not the stand-in's: ca_file comes below.
            trust_test_ca: false,
            extra: format!("ca_file = \"{}\"\n", self.ca_file.display()),
            ..self.env.reader(name)
        }
    }

    /// An app-only reader (client credentials with a client secret); the
    /// IdP lets the app into [`USER`]'s mailbox only if the test grants it
    /// ([`crate::IdP::grant_app_access`]).
    pub fn app_only_reader(&self, name: &str) -> ReaderSpec {
        let secret = "graph-app-secret-1";
        self.env.idp.set_client_secret(secret);
        let file = self.env.path("graph-client-secret");
        std::fs::write(&file, format!("{secret}\n")).expect("write the client secret");
        self.env.set_oauth_extra(&format!(
            "client_secret = {{ file = \"{}\" }}",
            file.display()
        ));
        ReaderSpec {
            grant: "client_credentials",
            ..self.reader(name)
        }
    }

    /// Delivers `raw` into [`USER`]'s Inbox; returns its immutable id.
    pub fn deliver(&self, raw: &[u8]) -> String {
        self.graph.deliver(USER, "Inbox", raw)
    }
}
