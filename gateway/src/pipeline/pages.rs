//! Stage 2, gateway pages: what the gateway answers itself, under `/kakehashi/` (a prefix the
//! engine API never uses): the login page for browsers, and the status page
//! (`/kakehashi/status`, `status.json`, its stylesheet and script; `crate::status`).
//!
//! The status page needs no sign-in: reception staff at an admitted terminal see the clinic's
//! state. A person signed in on the login page whose ID is in `[status] operators` sees the
//! operator's sections too; that view, and a signed-in person's view without them, are recorded
//! in the audit log (a plain view, like showing the login form, decides nothing and is not, or
//! the page's own refresh every two seconds would fill the log).
//!
//! A browser cannot send HTTP Basic gracefully, so it signs in once here and gets a session
//! cookie: `Secure` (only over TLS), `HttpOnly` (no script can read it), `SameSite=Strict` (no
//! other site can make the browser send it), and valid only together with the proof of the
//! terminal that signed in (checked on every request), so a copied cookie is useless.

use std::sync::Arc;

use http_body_util::{BodyExt, Limited};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri};

use engine_proxy::upstream::ProxyBody;

use crate::audit::Decision;
use crate::auth::{Denied, People};
use crate::doors::identity::Terminal;
use crate::http1;
use crate::metrics::Metrics;
use crate::pipeline::reply::{locked_out, reply};
use crate::status::{self, Lang, render};

/// Paths the gateway answers itself.
pub const PREFIX: &str = "/kakehashi/";
const LOGIN: &str = "/kakehashi/login";
const LOGOUT: &str = "/kakehashi/logout";
const COOKIE: &str = "kakehashi_session";
/// A login form is a few dozen bytes; anything much larger is not one.
const MAX_FORM: usize = 4096;

/// The session token of a request's cookie, if it has one.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

/// Removes the gateway's own cookie before a request goes upstream: the engine has no use for
/// it and must never see it. Other cookies pass untouched.
pub fn strip_session_cookie(headers: &mut HeaderMap) {
    if session_cookie(headers).is_none() {
        return;
    }
    let rest: Vec<String> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|p| !p.is_empty() && !p.starts_with(&format!("{COOKIE}=")))
        .map(str::to_owned)
        .collect();
    headers.remove(header::COOKIE);
    if !rest.is_empty()
        && let Ok(v) = HeaderValue::from_str(&rest.join("; "))
    {
        headers.insert(header::COOKIE, v);
    }
}

/// Whether a refused request came from a browser wanting a page (it gets the login page, not a
/// Basic challenge that would pop up the browser's own dialog).
pub fn wants_page(req: &Request<http1::Body>) -> bool {
    req.method() == Method::GET
        && req
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("text/html"))
}

/// 303 to the login page, coming back to `uri` afterwards.
pub fn redirect_to_login(uri: &Uri) -> Response<ProxyBody> {
    let next = uri.path_and_query().map_or("/", |p| p.as_str());
    let target: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("next", next)
        .finish();
    see_other(&format!("{LOGIN}?{target}"))
}

fn see_other(location: &str) -> Response<ProxyBody> {
    let mut r = reply(StatusCode::SEE_OTHER, "text/plain; charset=utf-8", "");
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// Only a local path may be a redirect target: never another site, never `//host`.
fn local_path(next: &str) -> &str {
    if next.starts_with('/') && !next.starts_with("//") && !next.contains('\\') {
        next
    } else {
        "/"
    }
}

fn escape(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '&' => "&amp;".into(),
            '<' => "&lt;".into(),
            '>' => "&gt;".into(),
            '"' => "&quot;".into(),
            '\'' => "&#39;".into(),
            c => c.to_string(),
        })
        .collect()
}

fn page(status: StatusCode, terminal: &str, next: &str, message: Option<&str>) -> Response<ProxyBody> {
    let message = message
        .map(|m| format!("<p class=\"error\" role=\"alert\">{}</p>", escape(m)))
        .unwrap_or_default();
    let html = format!(
        r#"<!doctype html>
<html lang="ja"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>Kakehashi sign-in</title>
<style>body{{font-family:sans-serif;max-width:22em;margin:4em auto}}label,input,button{{display:block;width:100%;margin:.3em 0}}.error{{color:#b00}}</style>
</head><body>
<h1>Sign in</h1>
<p>Terminal: <strong>{terminal}</strong></p>
{message}
<form method="post" action="{LOGIN}">
<input type="hidden" name="next" value="{next}">
<label>ID <input name="id" autocomplete="username" required autofocus></label>
<label>Password <input name="password" type="password" autocomplete="current-password" required></label>
<button type="submit">Sign in</button>
</form>
</body></html>
"#,
        terminal = escape(terminal),
        next = escape(next),
    );
    reply(status, "text/html; charset=utf-8", html)
}

/// The headers of every status answer: nothing from elsewhere, no framing, no sniffing.
fn secure(h: &mut HeaderMap) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
}

/// The page's stylesheet or script.
fn asset(content_type: &'static str, body: &'static str) -> Response<ProxyBody> {
    let mut r = reply(StatusCode::OK, content_type, body);
    secure(r.headers_mut());
    r
}

/// What the stage consults: the people (sign-in and sessions), and the sign-in counters.
pub struct Pages {
    pub people: Arc<People>,
    pub metrics: Arc<Metrics>,
    /// The status page's sources; `None`: no status page.
    pub status: Option<Arc<status::Sources>>,
}

/// A page's answer, and what the audit log records of it, if anything (showing the form is not
/// an access decision; signing in and out are).
pub struct Page {
    pub response: Response<ProxyBody>,
    pub recorded: Option<Recorded>,
}

/// A decision a page made.
pub struct Recorded {
    pub decision: Decision,
    pub reason: String,
    /// The ID that signed in, or tried to.
    pub user: Option<String>,
}

impl Page {
    fn shown(response: Response<ProxyBody>) -> Page {
        Page {
            response,
            recorded: None,
        }
    }
}

impl Pages {
    /// Whether a request is for the gateway's own pages rather than the engine.
    pub fn serves(req: &Request<http1::Body>) -> bool {
        req.uri().path().starts_with(PREFIX)
    }

    /// Serves `/kakehashi/…` to the terminal `terminal`.
    pub async fn serve(&self, req: Request<http1::Body>, terminal: &Terminal) -> Page {
        let query_next = req
            .uri()
            .query()
            .and_then(|q| {
                form_urlencoded::parse(q.as_bytes())
                    .find(|(k, _)| k == "next")
                    .map(|(_, v)| v.into_owned())
            })
            .unwrap_or_else(|| "/".into());
        match (req.method().clone(), req.uri().path()) {
            (Method::GET, render::PAGE | render::JSON) if self.status.is_some() => {
                self.status(&req, terminal).await
            }
            (Method::GET, render::CSS) if self.status.is_some() => {
                Page::shown(asset("text/css; charset=utf-8", render::STYLESHEET))
            }
            (Method::GET, render::JS) if self.status.is_some() => {
                Page::shown(asset("text/javascript; charset=utf-8", render::SCRIPT))
            }
            (Method::GET, LOGIN) => Page::shown(page(
                StatusCode::OK,
                &terminal.name,
                local_path(&query_next),
                None,
            )),
            (Method::POST, LOGIN) => self.sign_in(req, terminal).await,
            (Method::POST, LOGOUT) => {
                if let Some(token) = session_cookie(req.headers()) {
                    self.people.close_session(token);
                }
                let mut r = see_other(LOGIN);
                r.headers_mut().insert(
                    header::SET_COOKIE,
                    HeaderValue::from_static(
                        "kakehashi_session=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0",
                    ),
                );
                Page {
                    response: r,
                    recorded: Some(Recorded {
                        decision: Decision::Allow,
                        reason: "signed out".into(),
                        user: None,
                    }),
                }
            }
            (_, LOGIN | LOGOUT) => {
                let mut r = reply(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "text/plain; charset=utf-8",
                    "method not allowed\n",
                );
                r.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("GET, POST"));
                Page::shown(r)
            }
            _ => Page::shown(reply(
                StatusCode::NOT_FOUND,
                "text/plain; charset=utf-8",
                "not found\n",
            )),
        }
    }

    /// The status page or its JSON, with the operator's sections for a signed-in operator.
    async fn status(&self, req: &Request<http1::Body>, terminal: &Terminal) -> Page {
        let Some(sources) = self.status.clone() else {
            return Page::shown(reply(
                StatusCode::NOT_FOUND,
                "text/plain; charset=utf-8",
                "not found\n",
            ));
        };
        let user = session_cookie(req.headers())
            .and_then(|token| self.people.session(token, terminal))
            .and_then(|person| person.user);
        let operator = sources.is_operator(user.as_deref());
        let lang = Lang::choose(
            req.uri().query(),
            req.headers()
                .get(header::ACCEPT_LANGUAGE)
                .and_then(|v| v.to_str().ok()),
        );
        let json = req.uri().path() == render::JSON;
        let Ok(report) = tokio::task::spawn_blocking(move || sources.collect(operator)).await else {
            return Page::shown(reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain; charset=utf-8",
                "the status could not be gathered\n",
            ));
        };
        let mut response = match json {
            true => reply(StatusCode::OK, "application/json", report.json()),
            false => reply(
                StatusCode::OK,
                "text/html; charset=utf-8",
                render::page(&report, lang),
            ),
        };
        let h = response.headers_mut();
        secure(h);
        h.insert(header::VARY, HeaderValue::from_static("Accept-Language, Cookie"));
        let recorded = user.map(|user| Recorded {
            decision: Decision::Allow,
            reason: match operator {
                true => "status page with the operator's sections".to_owned(),
                false => "status page without the operator's sections: not in [status] operators".to_owned(),
            },
            user: Some(user.to_string()),
        });
        Page { response, recorded }
    }

    async fn sign_in(&self, req: Request<http1::Body>, terminal: &Terminal) -> Page {
        let body = match Limited::new(req.into_body(), MAX_FORM).collect().await {
            Ok(b) => zeroize::Zeroizing::new(b.to_bytes().to_vec()),
            Err(_) => {
                let response = reply(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "text/plain; charset=utf-8",
                    "form too large\n",
                );
                return Page {
                    response,
                    recorded: Some(Recorded {
                        decision: Decision::Deny,
                        reason: format!("login form over {MAX_FORM} bytes"),
                        user: None,
                    }),
                };
            }
        };
        let (mut id, mut password, mut next) = (
            String::new(),
            zeroize::Zeroizing::new(String::new()),
            "/".to_owned(),
        );
        for (k, v) in form_urlencoded::parse(&body) {
            match &*k {
                "id" => id = v.into_owned(),
                "password" => *password = v.into_owned(),
                "next" => next = local_path(&v).to_owned(),
                _ => {}
            }
        }
        let people = &self.people;
        let outcome = people.verify(&id, password.as_bytes(), terminal).await;
        let user = Some(id).filter(|i| !i.is_empty());
        let (response, decision, reason) = match &outcome {
            Ok(person) => {
                let token = people.open_session(person, terminal);
                let cookie = format!(
                    "{COOKIE}={token}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={}",
                    people.session_lifetime().as_secs()
                );
                let mut r = see_other(&next);
                if let Ok(v) = HeaderValue::from_str(&cookie) {
                    r.headers_mut().insert(header::SET_COOKIE, v);
                }
                (r, Decision::Allow, "signed in on the login page".to_owned())
            }
            Err(denied) => {
                match denied {
                    Denied::WrongPassword { .. } => Metrics::inc(&self.metrics.auth_failures_total),
                    Denied::LockedOut { .. } => Metrics::inc(&self.metrics.lockouts_total),
                    _ => {}
                }
                let response = match denied {
                    Denied::LockedOut { retry_after, .. } => locked_out(retry_after.as_secs()),
                    Denied::AccountLocked { .. } => page(
                        StatusCode::FORBIDDEN,
                        &terminal.name,
                        &next,
                        Some("This account is locked. Ask the clinic's administrator."),
                    ),
                    Denied::Unavailable(_) => page(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &terminal.name,
                        &next,
                        Some("Sign-in is unavailable right now."),
                    ),
                    _ => page(
                        StatusCode::UNAUTHORIZED,
                        &terminal.name,
                        &next,
                        Some("Wrong ID or password."),
                    ),
                };
                (
                    response,
                    Decision::Deny,
                    format!("login page: {}", denied.reason()),
                )
            }
        };
        Page {
            response,
            recorded: Some(Recorded {
                decision,
                reason,
                user,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Clinic, PASSWORD, request, text};
    use std::sync::atomic::Ordering::Relaxed;

    const FORM: &[(&str, &str)] = &[("content-type", "application/x-www-form-urlencoded")];

    #[tokio::test]
    async fn the_login_page_signs_in_with_a_cookie_for_this_terminal_and_out_again() {
        let c = Clinic::new(&[("reception-1", true)], &["nurse"]);
        let pages = Pages {
            people: c.people.clone(),
            metrics: Arc::new(Metrics::default()),
            status: None,
        };
        let terminal = c.admitted("reception-1").terminal;
        let form = pages
            .serve(request("GET", "/kakehashi/login?next=/x%22y", &[], ""), &terminal)
            .await;
        assert!(form.recorded.is_none(), "showing the form decides nothing");
        let html = text(form.response).await;
        assert!(html.contains("<strong>reception-1</strong>"), "{html}");
        assert!(
            html.contains("value=\"/x&quot;y\""),
            "the next path, escaped: {html}"
        );

        let wrong = pages
            .serve(
                request("POST", LOGIN, FORM, "id=nurse&password=nope&next=/a"),
                &terminal,
            )
            .await;
        assert_eq!(wrong.response.status(), StatusCode::UNAUTHORIZED);
        let recorded = wrong.recorded.unwrap();
        assert_eq!(recorded.decision, Decision::Deny);
        assert_eq!(recorded.reason, "login page: wrong password");
        assert_eq!(recorded.user.as_deref(), Some("nurse"));
        assert_eq!(pages.metrics.auth_failures_total.load(Relaxed), 1);

        let body = format!(
            "id=nurse&password={}&next=https://elsewhere.example/",
            PASSWORD.replace(' ', "+")
        );
        let right = pages.serve(request("POST", LOGIN, FORM, &body), &terminal).await;
        assert_eq!(right.response.status(), StatusCode::SEE_OTHER);
        assert_eq!(
            right.response.headers().get(header::LOCATION).unwrap(),
            "/",
            "never another site"
        );
        let cookie = right
            .response
            .headers()
            .get(header::SET_COOKIE)
            .unwrap()
            .to_str()
            .unwrap();
        assert!(cookie.contains("Secure; HttpOnly; SameSite=Strict"), "{cookie}");
        let token = cookie
            .trim_start_matches("kakehashi_session=")
            .split(';')
            .next()
            .unwrap();
        assert!(c.people.session(token, &terminal).is_some());
        assert_eq!(right.recorded.unwrap().decision, Decision::Allow);

        let cookie = format!("kakehashi_session={token}");
        let out = pages
            .serve(request("POST", LOGOUT, &[("cookie", &cookie)], ""), &terminal)
            .await;
        assert_eq!(out.response.status(), StatusCode::SEE_OTHER);
        assert!(
            c.people.session(token, &terminal).is_none(),
            "the session is over"
        );
        let put = pages.serve(request("PUT", LOGIN, &[], ""), &terminal).await;
        assert_eq!(put.response.status(), StatusCode::METHOD_NOT_ALLOWED);
    }

    #[test]
    fn the_gateway_cookie_never_reaches_the_engine_and_others_do() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; kakehashi_session=secret; b=2"),
        );
        strip_session_cookie(&mut headers);
        assert_eq!(headers.get(header::COOKIE).unwrap(), "a=1; b=2");
    }
}
