//! Login redirection for planned moves (RFC 7143 §11.13.5 status 0x0101, "target moved
//! temporarily", and §13.8 TargetAddress): while a portal address is being moved to another
//! node, its initiators are asked to log out and each login arriving on the address is
//! answered with the address that will serve it, instead of a session the move would cut.
//! An entry lasts for a bounded time (the move's duration): after it the address is served
//! normally again (it has moved away, or the move was called off).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Where logins arriving on an address go instead, and until when.
#[derive(Debug, Default)]
pub struct Redirects {
    entries: Mutex<HashMap<IpAddr, (String, Instant)>>,
}

impl Redirects {
    /// Sends logins arriving on `local` to `target_address` (a checked TargetAddress value)
    /// for `lasting`.
    pub fn set(&self, local: IpAddr, target_address: String, lasting: Duration) {
        let until = Instant::now() + lasting;
        self.lock()
            .insert(local.to_canonical(), (target_address, until));
    }

    /// Ends the redirection of `local` (the address has come to this node to be served).
    pub fn clear(&self, local: IpAddr) {
        self.lock().remove(&local.to_canonical());
    }

    /// The TargetAddress for a login arriving on `local`, if it is being redirected now.
    pub fn lookup(&self, local: IpAddr) -> Option<String> {
        let mut entries = self.lock();
        let now = Instant::now();
        entries.retain(|_, (_, until)| *until > now);
        entries.get(&local.to_canonical()).map(|(to, _)| to.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, (String, Instant)>> {
        // Every update is one insert or removal: a poisoned lock holds consistent data.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Checks a TargetAddress value (RFC 7143 §13.8: `domainname[:port][,portal-group-tag]`,
/// an IPv6 address in brackets): returns it as given, or why it cannot be one.
pub fn check_target_address(text: &str) -> Result<String, String> {
    let (address, tag) = match text.rsplit_once(',') {
        Some((address, tag)) => (address, Some(tag)),
        None => (text, None),
    };
    if let Some(tag) = tag
        && tag.parse::<u16>().is_err()
    {
        return Err(format!(
            "{text:?}: the portal group tag after ',' must be a number from 0 to 65535"
        ));
    }
    let host = if let Some(rest) = address.strip_prefix('[') {
        let Some((ip, after)) = rest.split_once(']') else {
            return Err(format!("{text:?}: an IPv6 address needs its closing ']'"));
        };
        if ip.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("{text:?}: {ip:?} is not an IPv6 address"));
        }
        check_port(text, after.strip_prefix(':'))?;
        return Ok(text.to_owned());
    } else {
        match address.rsplit_once(':') {
            Some((host, port)) => {
                check_port(text, Some(port))?;
                host
            }
            None => address,
        }
    };
    let valid = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    if !valid {
        return Err(format!(
            "{text:?}: expected an address such as \"10.0.0.2:3260\" or \"10.0.0.2:3260,1\""
        ));
    }
    Ok(text.to_owned())
}

fn check_port(text: &str, port: Option<&str>) -> Result<(), String> {
    match port {
        None => Ok(()),
        Some(p) if p.parse::<u16>().is_ok_and(|p| p != 0) => Ok(()),
        Some(_) => Err(format!(
            "{text:?}: the port must be a number from 1 to 65535"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_redirects_its_address_only_and_only_for_a_while() {
        let redirects = Redirects::default();
        let ip: IpAddr = "10.9.0.201".parse().unwrap();
        redirects.set(ip, "10.9.0.12:3260,1".into(), Duration::from_secs(60));
        assert_eq!(redirects.lookup(ip).as_deref(), Some("10.9.0.12:3260,1"));
        // The same address through a dual-stack socket.
        assert!(
            redirects
                .lookup("::ffff:10.9.0.201".parse().unwrap())
                .is_some()
        );
        assert_eq!(redirects.lookup("10.9.0.202".parse().unwrap()), None);
        redirects.clear(ip);
        assert_eq!(redirects.lookup(ip), None, "cleared");
        redirects.set(ip, "10.9.0.12:3260".into(), Duration::ZERO);
        assert_eq!(redirects.lookup(ip), None, "expired");
    }

    #[test]
    fn target_addresses_are_checked() {
        for good in [
            "10.0.0.2",
            "10.0.0.2:3260",
            "10.0.0.2:3260,1",
            "[::1]:3260,2",
            "node-b.example",
        ] {
            assert_eq!(check_target_address(good).as_deref(), Ok(good));
        }
        for bad in [
            "",
            "10.0.0.2:0",
            "10.0.0.2:x",
            "10.0.0.2:3260,x",
            "[::1",
            "[nope]:3260",
            "a b",
            "x;y",
        ] {
            assert!(check_target_address(bad).is_err(), "{bad}");
        }
    }
}
