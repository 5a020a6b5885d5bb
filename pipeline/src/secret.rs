//! Keeping secrets out of what dbmux prints.

/// `url` with its password replaced by `***`, for logs, errors and `Debug`.
/// An unparsable URL is not echoed at all (it may hold a password in a shape
/// the parser did not recognise).
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => "<unparsable URL>".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_never_survive() {
        assert_eq!(redact_url("mysql://u:pw@h:1/db"), "mysql://u:***@h:1/db");
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert!(!redact_url("postgres://u:topsecret@h/db").contains("topsecret"));
        assert_eq!(redact_url("not a url with secret"), "<unparsable URL>");
    }
}
