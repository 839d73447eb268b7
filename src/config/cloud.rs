//! Microsoft's national clouds: which sign-in host, mail host and scope host
//! belong together.
//!
//! A token from one cloud is useless in another, and the failure it causes
//! (an opaque AADSTS error or an IMAP `AUTHENTICATE failed`) does not say
//! so. Keeping the three hosts in one table lets the config reject a
//! mismatch up front with a message that names the fix.

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
/// kind of use, so each gets its own scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    Imap,
    Pop,
    Smtp,
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

    /// The scope to ask for: the delegated permission for `service`, or
    /// `.default` for an app-only token (app permissions are granted in the
    /// portal, not requested).
    pub fn scope(self, service: Service, app_only: bool) -> String {
        let resource = self.outlook_resource(app_only);
        if app_only {
            return format!("{resource}/.default");
        }
        let permission = match service {
            Service::Imap => "IMAP.AccessAsUser.All",
            Service::Pop => "POP.AccessAsUser.All",
            Service::Smtp => "SMTP.Send",
        };
        format!("{resource}/{permission}")
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
            Cloud::of_authority_host("login.microsoftonline.us"),
            Some(Cloud::Usgov)
        );
        assert!(Cloud::UsgovDod.shares_authority(Cloud::Usgov));
        assert!(!Cloud::China.shares_authority(Cloud::Global));
    }
}
