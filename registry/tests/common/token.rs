//! A token server for docker-registry's `auth: token`: issues ES256 JWTs whose `x5c` header
//! carries a self-signed certificate that is also the registry's `rootcertbundle`.
//! Can check basic credentials, shorten lifetimes, and issue already-expired tokens.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;

use super::http::{HttpRequest, HttpResponse, HttpServer};

pub use registry::testutil::{TOKEN_ISSUER as ISSUER, TOKEN_SERVICE as SERVICE};

#[derive(Debug, Clone)]
pub struct TokenPolicy {
    /// `expires_in` announced to clients (seconds).
    pub expires_in: u64,
    /// How many of the next tokens are issued already expired (beyond the registry's 60 s
    /// leeway), while announcing `expires_in`: the registry then refuses them mid-use.
    pub expired_next: u32,
    /// Required basic credentials, if any.
    pub user: Option<(String, String)>,
}

pub struct TokenServer {
    pub http: HttpServer,
    pub bundle: PathBuf,
    pub issued: Arc<AtomicU32>,
    pub refused: Arc<AtomicU32>,
    pub policy: Arc<Mutex<TokenPolicy>>,
    /// Every token issued (to check they never appear in logs).
    pub tokens: Arc<Mutex<Vec<String>>>,
}

impl TokenServer {
    pub fn start(dir: &Path, policy: TokenPolicy) -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["starling-token-issuer".into()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let bundle = dir.join("token-bundle.pem");
        std::fs::write(&bundle, cert.pem()).unwrap();
        let x5c = base64::engine::general_purpose::STANDARD.encode(cert.der().as_ref());
        let enc = jsonwebtoken::EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
        let issued = Arc::new(AtomicU32::new(0));
        let refused = Arc::new(AtomicU32::new(0));
        let policy = Arc::new(Mutex::new(policy));
        let tokens = Arc::new(Mutex::new(Vec::new()));
        let (i2, r2, p2, t2) = (
            issued.clone(),
            refused.clone(),
            policy.clone(),
            tokens.clone(),
        );
        let handler = move |req: &HttpRequest| -> HttpResponse {
            let mut pol = p2.lock().unwrap();
            if let Some((u, p)) = &pol.user {
                let want = format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
                );
                if req.header("authorization") != Some(want.as_str()) {
                    r2.fetch_add(1, Ordering::SeqCst);
                    return HttpResponse::new(401).body("{\"details\":\"bad credentials\"}");
                }
            }
            let q = req.query();
            let service = q
                .iter()
                .find(|(k, _)| k == "service")
                .map(|(_, v)| v.clone());
            if service.as_deref() != Some(SERVICE) {
                return HttpResponse::new(400).body("wrong service");
            }
            let access: Vec<serde_json::Value> = q
                .iter()
                .filter(|(k, _)| k == "scope")
                .flat_map(|(_, v)| v.split(' ').map(str::to_string).collect::<Vec<_>>())
                .filter_map(|s| {
                    let mut it = s.splitn(3, ':');
                    let (t, name, actions) = (it.next()?, it.next()?, it.next()?);
                    Some(serde_json::json!({
                        "type": t, "name": name,
                        "actions": actions.split(',').collect::<Vec<_>>(),
                    }))
                })
                .collect();
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs();
            let (iat, exp) = if pol.expired_next > 0 {
                pol.expired_next -= 1;
                (now - 600, now - 300)
            } else {
                (now - 5, now + pol.expires_in)
            };
            let n = i2.fetch_add(1, Ordering::SeqCst);
            let claims = serde_json::json!({
                "iss": ISSUER, "sub": "tester", "aud": SERVICE,
                "exp": exp, "nbf": iat, "iat": iat, "jti": format!("t{n}-{now}"),
                "access": access,
            });
            let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
            header.x5c = Some(vec![x5c.clone()]);
            let jwt = jsonwebtoken::encode(&header, &claims, &enc).unwrap();
            t2.lock().unwrap().push(jwt.clone());
            let body = serde_json::json!({ "token": jwt, "expires_in": pol.expires_in });
            HttpResponse::new(200)
                .header("Content-Type", "application/json")
                .body(body.to_string())
        };
        let http = HttpServer::start(Arc::new(handler));
        TokenServer {
            http,
            bundle,
            issued,
            refused,
            policy,
            tokens,
        }
    }

    pub fn realm(&self) -> String {
        format!("http://{}/token", self.http.host())
    }

    pub fn issued(&self) -> u32 {
        self.issued.load(Ordering::SeqCst)
    }
}
