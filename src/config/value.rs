//! Value forms that several sections share: durations written like `60s`
//! (`poll_interval`, `timeout`, `shutdown_timeout`, `ack_max_age`, ...) and
//! which hosts count as this machine (`tls = "none"`, a plain-http
//! `authority`, `[reader.reply]`'s own `tls`). Owns no key of its own.

use std::time::Duration;

use serde::Deserialize;

/// A duration written like `60s`, `5m` or `1h 30m`.
#[derive(Clone, Copy)]
pub(crate) struct HumanDuration(pub(crate) Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let value = humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "{text:?} is not a duration ({e}); write e.g. \"60s\" or \"5m\""
            ))
        })?;
        if value.is_zero() {
            return Err(serde::de::Error::custom(
                "a duration of zero is not allowed",
            ));
        }
        Ok(HumanDuration(value))
    }
}

/// Whether `host` names this machine, so plain text never leaves it.
pub(crate) fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}
