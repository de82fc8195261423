//! iSCSI names (RFC 7143 §4.2.7): the rule every target and initiator name follows.

/// Checks an iSCSI name (RFC 7143 §4.2.7): `iqn.`, `eui.` or `naa.` format, at most 223
/// bytes, lower case. Returns why it is not valid.
pub fn check_iscsi_name(name: &str) -> Result<(), String> {
    if name.len() > 223 {
        return Err("longer than 223 bytes".into());
    }
    if name.chars().any(|c| c.is_ascii_uppercase()) {
        return Err("iSCSI names are lower case (RFC 7143 §4.2.7.1)".into());
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':');
    if let Some(rest) = name.strip_prefix("iqn.") {
        // iqn.yyyy-mm.reversed.domain[:anything]
        let date_ok = rest.len() >= 8
            && rest.as_bytes()[..4].iter().all(u8::is_ascii_digit)
            && rest.as_bytes()[4] == b'-'
            && rest.as_bytes()[5..7].iter().all(u8::is_ascii_digit)
            && rest.as_bytes()[7] == b'.';
        if !date_ok {
            return Err(
                "an iqn name starts with iqn.yyyy-mm. followed by a reversed domain".into(),
            );
        }
        if !name.chars().all(allowed) {
            return Err("only letters, digits, '.', '-' and ':' are allowed".into());
        }
        Ok(())
    } else if let Some(hex) = name.strip_prefix("eui.") {
        if hex.len() == 16 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
            Ok(())
        } else {
            Err("an eui name is eui. followed by 16 hex digits".into())
        }
    } else if let Some(hex) = name.strip_prefix("naa.") {
        if matches!(hex.len(), 16 | 32) && hex.chars().all(|c| c.is_ascii_hexdigit()) {
            Ok(())
        } else {
            Err("a naa name is naa. followed by 16 or 32 hex digits".into())
        }
    } else {
        Err("must start with iqn., eui. or naa.".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iscsi_names() {
        assert!(check_iscsi_name("iqn.2026-11.org.example:disk0").is_ok());
        assert!(check_iscsi_name("eui.02004567A425678D".to_ascii_lowercase().as_str()).is_ok());
        assert!(check_iscsi_name("naa.52004567ba64678d").is_ok());
        assert!(check_iscsi_name("iqn.26-11.x").is_err());
        assert!(check_iscsi_name("iqn.2026-11.org.example:disk 0").is_err());
        assert!(check_iscsi_name("target0").is_err());
    }
}
