//! Secrets out of what is shown: the one function that hides the
//! credentials of a URL or URI before it reaches a terminal, a log line, an
//! error message or `Debug` output (restic repository URIs such as
//! `rest:https://user:pw@host/`, PostgreSQL URLs, the metadata server's
//! URL).

/// `uri` with its credentials replaced by `***`: the password of a
/// `user:password@` part, a lone `token@` part (for a restic REST or S3
/// URI it can only be a credential; a PostgreSQL role name is kept), and
/// `password=` query parameters. Text that is not a URL (`/srv/restic`,
/// `sftp:user@host:/path`) comes back as it is.
pub fn url(uri: &str) -> String {
    let Some(scheme_end) = uri.find("://") else {
        return uri.to_string();
    };
    let (head, rest) = uri.split_at(scheme_end + 3);
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None if head.starts_with("postgres") => format!("{userinfo}@{host}"),
            None => format!("***@{host}"),
        },
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let params: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                    _ => kv.to_string(),
                })
                .collect();
            format!("{path}?{}", params.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{head}{authority}{tail}")
}

#[cfg(test)]
mod tests {
    use super::url;

    #[test]
    fn credentials_are_hidden_and_the_rest_kept() {
        for (input, shown) in [
            ("/srv/restic", "/srv/restic"),
            ("sftp:user@host:/srv/r", "sftp:user@host:/srv/r"),
            (
                "rest:https://user:s3cr3t@host:8000/repo",
                "rest:https://user:***@host:8000/repo",
            ),
            ("rest:https://token@host/", "rest:https://***@host/"),
            ("rest:http://u:p@ss@h/x@y", "rest:http://u:***@h/x@y"),
            (
                "s3:https://s3.example/bucket",
                "s3:https://s3.example/bucket",
            ),
            (
                "postgres://u:s3cret@db:5432/x?sslmode=require",
                "postgres://u:***@db:5432/x?sslmode=require",
            ),
            (
                "postgres://u@db/x?password=s3cret&a=b",
                "postgres://u@db/x?password=***&a=b",
            ),
            ("postgres://db", "postgres://db"),
            ("https://h:7443/", "https://h:7443/"),
            ("nonsense", "nonsense"),
        ] {
            assert_eq!(url(input), shown, "{input}");
        }
    }
}
