//! Microsoft's national clouds: which sign-in host, mail hosts, Graph host
//! and scope hosts belong together, and the scope each [`Service`] asks
//! for.
//!
//! A token from one cloud is useless in another, and the failure it causes
//! (an opaque AADSTS error, an IMAP `AUTHENTICATE failed`, a Graph 401)
//! does not say so. Keeping the hosts in one table lets the config reject a
//! mismatch up front with a message that names the fix.
//!
//! Scopes here are the permissions alone: `offline_access` (a refresh
//! token) is added in one place, where the token store builds the request
//! (`auth::scopes`), for every delegated scope alike.

use serde::Deserialize;

/// Which Microsoft 365 cloud an app registration lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Cloud {
    #[default]
    Global,
    /// GCC High.
    Usgov,
    /// DoD.
    UsgovDod,
    /// Operated by 21Vianet.
    China,
}

/// What an access token is for: one token serves one resource and one
/// kind of use, so each gets its own scope. Entra refuses a request whose
/// scopes name two resources (AADSTS28000, AADSTS700022), so a scope never
/// mixes Exchange Online (IMAP, POP, SMTP) with Microsoft Graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    Imap,
    Pop,
    Smtp,
    /// Reading a mailbox over Microsoft Graph (`Mail.ReadWrite`: the
    /// after-steps flag, move and delete).
    Graph,
    /// [`Service::Graph`] for a reader whose acknowledgements also go over
    /// Graph (`[reader.reply] via = "graph"`): `Mail.ReadWrite` and
    /// `Mail.Send` in one token, since both are Graph's; reading and
    /// sending share it.
    GraphWithSend,
}

impl Cloud {
    pub const ALL: [Cloud; 4] = [Cloud::Global, Cloud::Usgov, Cloud::UsgovDod, Cloud::China];

    pub fn as_str(self) -> &'static str {
        match self {
            Cloud::Global => "global",
            Cloud::Usgov => "usgov",
            Cloud::UsgovDod => "usgov-dod",
            Cloud::China => "china",
        }
    }

    /// Base URL of the identity platform.
    pub fn authority(self) -> &'static str {
        match self {
            Cloud::Global => "https://login.microsoftonline.com",
            Cloud::Usgov | Cloud::UsgovDod => "https://login.microsoftonline.us",
            Cloud::China => "https://login.partner.microsoftonline.cn",
        }
    }

    /// The IMAP and POP3 host of Exchange Online in this cloud.
    pub fn mail_host(self) -> &'static str {
        match self {
            Cloud::Global => "outlook.office365.com",
            Cloud::Usgov => "outlook.office365.us",
            Cloud::UsgovDod => "outlook-dod.office365.us",
            Cloud::China => "partner.outlook.cn",
        }
    }

    /// The SMTP submission host (port 587, STARTTLS) of Exchange Online in
    /// this cloud, for acknowledgements.
    pub fn smtp_host(self) -> &'static str {
        match self {
            Cloud::Global => "smtp.office365.com",
            Cloud::Usgov => "smtp.office365.us",
            Cloud::UsgovDod => "smtp-dod.office365.us",
            Cloud::China => "smtp.partner.outlook.cn",
        }
    }

    /// The Microsoft Graph host of this cloud: the default `host` of a
    /// `protocol = "graph"` reader, and the resource its scopes hang off.
    pub fn graph_host(self) -> &'static str {
        match self {
            Cloud::Global => "graph.microsoft.com",
            Cloud::Usgov => "graph.microsoft.us",
            Cloud::UsgovDod => "dod-graph.microsoft.us",
            Cloud::China => "microsoftgraph.chinacloudapi.cn",
        }
    }

    /// Hosts that are known to belong to this cloud's Exchange Online.
    fn known_hosts(self) -> &'static [&'static str] {
        match self {
            Cloud::Global => &[
                "outlook.office365.com",
                "outlook.office.com",
                "smtp.office365.com",
            ],
            Cloud::Usgov => &["outlook.office365.us", "smtp.office365.us"],
            Cloud::UsgovDod => &["outlook-dod.office365.us", "smtp-dod.office365.us"],
            Cloud::China => &["partner.outlook.cn", "smtp.partner.outlook.cn"],
        }
    }

    /// The cloud a Microsoft mail host belongs to; `None` for any other host
    /// (a private server, a test server), which no cloud claims.
    pub fn of_mail_host(host: &str) -> Option<Cloud> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        Cloud::ALL
            .into_iter()
            .find(|c| c.known_hosts().contains(&host.as_str()))
    }

    /// The cloud a Microsoft Graph host belongs to; `None` for any other
    /// host (a test stand-in, an Exchange host), which no cloud claims.
    pub fn of_graph_host(host: &str) -> Option<Cloud> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        Cloud::ALL.into_iter().find(|c| c.graph_host() == host)
    }

    /// The cloud a Microsoft sign-in host belongs to, if it is one.
    /// usgov and usgov-dod share one, so it maps to usgov.
    pub fn of_authority_host(host: &str) -> Option<Cloud> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        Cloud::ALL
            .into_iter()
            .find(|c| c.authority().strip_prefix("https://") == Some(host.as_str()))
    }

    /// Whether a sign-in host of `other` also serves this cloud.
    pub fn shares_authority(self, other: Cloud) -> bool {
        self.authority() == other.authority()
    }

    /// The resource URL the Exchange Online scopes hang off. Microsoft's own
    /// documentation uses outlook.office.com for delegated scopes in the
    /// global cloud; elsewhere the mail host is the resource.
    fn outlook_resource(self, app_only: bool) -> String {
        match (self, app_only) {
            (Cloud::Global, false) => "https://outlook.office.com".into(),
            _ => format!("https://{}", self.mail_host()),
        }
    }

    /// The resource URL the Graph scopes hang off: the cloud's Graph host,
    /// delegated and app-only alike.
    fn graph_resource(self) -> String {
        format!("https://{}", self.graph_host())
    }

    /// The scope to ask for: the delegated permission(s) for `service`, or
    /// `.default` for an app-only token (app permissions are granted in the
    /// portal, not requested). Always of one resource; without
    /// `offline_access` (see the module's doc).
    pub fn scope(self, service: Service, app_only: bool) -> String {
        let (resource, permissions): (String, &[&str]) = match service {
            Service::Imap => (self.outlook_resource(app_only), &["IMAP.AccessAsUser.All"]),
            Service::Pop => (self.outlook_resource(app_only), &["POP.AccessAsUser.All"]),
            Service::Smtp => (self.outlook_resource(app_only), &["SMTP.Send"]),
            Service::Graph => (self.graph_resource(), &["Mail.ReadWrite"]),
            Service::GraphWithSend => (self.graph_resource(), &["Mail.ReadWrite", "Mail.Send"]),
        };
        if app_only {
            return format!("{resource}/.default");
        }
        permissions
            .iter()
            .map(|p| format!("{resource}/{p}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_per_cloud_and_use() {
        assert_eq!(
            Cloud::Global.scope(Service::Imap, false),
            "https://outlook.office.com/IMAP.AccessAsUser.All"
        );
        assert_eq!(
            Cloud::Global.scope(Service::Pop, false),
            "https://outlook.office.com/POP.AccessAsUser.All"
        );
        assert_eq!(
            Cloud::Global.scope(Service::Smtp, false),
            "https://outlook.office.com/SMTP.Send"
        );
        assert_eq!(
            Cloud::Global.scope(Service::Imap, true),
            "https://outlook.office365.com/.default"
        );
        assert_eq!(
            Cloud::Usgov.scope(Service::Imap, false),
            "https://outlook.office365.us/IMAP.AccessAsUser.All"
        );
        assert_eq!(
            Cloud::China.scope(Service::Pop, true),
            "https://partner.outlook.cn/.default"
        );
    }

    #[test]
    fn graph_scopes_per_cloud() {
        let hosts = [
            (Cloud::Global, "graph.microsoft.com"),
            (Cloud::Usgov, "graph.microsoft.us"),
            (Cloud::UsgovDod, "dod-graph.microsoft.us"),
            (Cloud::China, "microsoftgraph.chinacloudapi.cn"),
        ];
        for (cloud, host) in hosts {
            assert_eq!(cloud.graph_host(), host);
            assert_eq!(
                cloud.scope(Service::Graph, false),
                format!("https://{host}/Mail.ReadWrite"),
                "{cloud:?}"
            );
            assert_eq!(
                cloud.scope(Service::GraphWithSend, false),
                format!("https://{host}/Mail.ReadWrite https://{host}/Mail.Send"),
                "{cloud:?}"
            );
            for service in [Service::Graph, Service::GraphWithSend] {
                assert_eq!(
                    cloud.scope(service, true),
                    format!("https://{host}/.default"),
                    "{cloud:?}"
                );
            }
        }
    }

    /// Entra refuses one request for two resources (AADSTS28000,
    /// AADSTS700022): no scope may name more than one.
    #[test]
    fn every_scope_names_one_resource() {
        let services = [
            Service::Imap,
            Service::Pop,
            Service::Smtp,
            Service::Graph,
            Service::GraphWithSend,
        ];
        for cloud in Cloud::ALL {
            for service in services {
                for app_only in [false, true] {
                    let scope = cloud.scope(service, app_only);
                    let resources: std::collections::HashSet<&str> = scope
                        .split_whitespace()
                        .map(|s| s.rsplit_once('/').map_or(s, |(r, _)| r))
                        .collect();
                    assert_eq!(resources.len(), 1, "{scope}");
                    assert!(!scope.contains("offline_access"), "{scope}");
                }
            }
        }
    }

    #[test]
    fn hosts_map_back_to_their_cloud() {
        assert_eq!(
            Cloud::of_mail_host("Outlook.Office365.com"),
            Some(Cloud::Global)
        );
        assert_eq!(
            Cloud::of_mail_host("outlook-dod.office365.us"),
            Some(Cloud::UsgovDod)
        );
        assert_eq!(
            Cloud::of_mail_host("partner.outlook.cn"),
            Some(Cloud::China)
        );
        assert_eq!(Cloud::of_mail_host("imap.example.org"), None);
        assert_eq!(
            Cloud::of_graph_host("Graph.Microsoft.com."),
            Some(Cloud::Global)
        );
        assert_eq!(
            Cloud::of_graph_host("dod-graph.microsoft.us"),
            Some(Cloud::UsgovDod)
        );
        assert_eq!(
            Cloud::of_graph_host("microsoftgraph.chinacloudapi.cn"),
            Some(Cloud::China)
        );
        assert_eq!(Cloud::of_graph_host("outlook.office365.com"), None);
        assert_eq!(Cloud::of_mail_host("graph.microsoft.com"), None);
        assert_eq!(
            Cloud::of_authority_host("login.microsoftonline.us"),
            Some(Cloud::Usgov)
        );
        assert!(Cloud::UsgovDod.shares_authority(Cloud::Usgov));
        assert!(!Cloud::China.shares_authority(Cloud::Global));
    }
}
