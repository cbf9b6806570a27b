//! `WWW-Authenticate` challenges (RFC 7235): `Basic realm="..."` and
//! `Bearer realm="...",service="...",scope="..."`.

use std::collections::HashMap;

/// An authentication challenge from a registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Challenge {
    /// HTTP basic auth.
    Basic,
    /// Token auth: get a bearer token from `realm`.
    Bearer {
        /// Token endpoint URL.
        realm: String,
        /// `service` parameter for the token endpoint.
        service: Option<String>,
    },
}

/// Parses the challenges of one or more `WWW-Authenticate` header values; bearer first.
pub(crate) fn parse_challenges<'a>(values: impl Iterator<Item = &'a str>) -> Vec<Challenge> {
    let mut out = Vec::new();
    for v in values {
        for (scheme, params) in split_challenges(v) {
            if scheme.eq_ignore_ascii_case("bearer") {
                if let Some(realm) = params.get("realm").filter(|r| !r.is_empty()) {
                    out.push(Challenge::Bearer {
                        realm: realm.clone(),
                        service: params.get("service").cloned(),
                    });
                }
            } else if scheme.eq_ignore_ascii_case("basic") {
                out.push(Challenge::Basic);
            }
        }
    }
    out.sort_by_key(|c| matches!(c, Challenge::Basic));
    out
}

/// Splits a header value into (scheme, params) pairs.
fn split_challenges(v: &str) -> Vec<(String, HashMap<String, String>)> {
    let mut out: Vec<(String, HashMap<String, String>)> = Vec::new();
    let chars: Vec<char> = v.chars().collect();
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < chars.len() && (chars[*i] == ' ' || chars[*i] == '\t' || chars[*i] == ',') {
            *i += 1;
        }
    };
    let token = |i: &mut usize| {
        let start = *i;
        while *i < chars.len() && !" \t,=\"".contains(chars[*i]) {
            *i += 1;
        }
        chars[start..*i].iter().collect::<String>()
    };
    loop {
        skip_ws(&mut i);
        if i >= chars.len() {
            break;
        }
        let word = token(&mut i);
        if word.is_empty() {
            i += 1;
            continue;
        }
        let mut j = i;
        while j < chars.len() && chars[j] == ' ' {
            j += 1;
        }
        if j < chars.len() && chars[j] == '=' {
            // A parameter of the current challenge.
            i = j + 1;
            while i < chars.len() && chars[i] == ' ' {
                i += 1;
            }
            let value = if i < chars.len() && chars[i] == '"' {
                i += 1;
                let mut s = String::new();
                while i < chars.len() && chars[i] != '"' {
                    if chars[i] == '\\' && i + 1 < chars.len() {
                        i += 1;
                    }
                    s.push(chars[i]);
                    i += 1;
                }
                i += 1;
                s
            } else {
                token(&mut i)
            };
            if let Some((_, params)) = out.last_mut() {
                params.insert(word.to_ascii_lowercase(), value);
            }
        } else {
            out.push((word, HashMap::new()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_and_basic() {
        let v = r#"Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:a/b:pull""#;
        assert_eq!(
            parse_challenges([v].into_iter()),
            vec![Challenge::Bearer {
                realm: "https://auth.example.com/token".into(),
                service: Some("registry.example.com".into()),
            }]
        );
        assert_eq!(
            parse_challenges([r#"Basic realm="Registry Realm""#].into_iter()),
            vec![Challenge::Basic]
        );
        let both = parse_challenges(
            [
                r#"Basic realm="x""#,
                r#"Bearer realm="http://t/token", service=s"#,
            ]
            .into_iter(),
        );
        assert!(matches!(&both[0], Challenge::Bearer { service: Some(s), .. } if s == "s"));
        assert_eq!(both.len(), 2);
    }

    #[test]
    fn ignores_garbage() {
        assert!(parse_challenges(["", "Bearer", "Digest realm=x", "==="].into_iter()).is_empty());
        let esc = parse_challenges([r#"Bearer realm="http://a/\"q\"""#].into_iter());
        assert!(matches!(&esc[0], Challenge::Bearer { realm, .. } if realm == "http://a/\"q\""));
    }
}
