//! The fake IdP's endpoints: device authorization (RFC 8628 §3.1-3.2),
//! the token endpoint with the device code (RFC 8628 §3.4-3.5), refresh
//! (RFC 6749 §6) and client credentials (RFC 6749 §4.4) grants, and token
//! introspection (RFC 7662). None holds the state lock across an
//! `.await` (they have none).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;

use super::events::{ClientAuth, IdpEvent};
use super::http::{parse_form, Call, Form, Reply};
use super::script::{DeviceOutcome, GrantType, IdpClient};
use super::state::{random_token, random_user_code, DeviceGrant, RefreshTokenState, State};
use super::Shared;

/// Paths the fake serves.
pub(super) const DEVICE_AUTHORIZATION_PATH: &str = "/devicecode";
pub(super) const TOKEN_PATH: &str = "/token";
pub(super) const INTROSPECTION_PATH: &str = "/introspect";
pub(super) const VERIFICATION_PATH: &str = "/device";

/// Slack when checking a client's polling pace (timer granularity).
const PACE_SLACK: Duration = Duration::from_millis(100);

/// A registered client and how it authenticated on this request.
struct Caller {
    client: IdpClient,
    how: ClientAuth,
}

/// One request's context: the state, the log, the connection number and
/// the endpoint, so refusals are recorded alike everywhere.
struct Ctx<'a> {
    shared: &'a Shared,
    id: usize,
    endpoint: &'static str,
    grant: Option<GrantType>,
}

impl Ctx<'_> {
    fn record(&self, event: IdpEvent) {
        self.shared.log.push(self.id, event);
    }

    fn violation(&self, what: impl Into<String>) {
        self.record(IdpEvent::ClientViolation(what.into()));
    }

    /// An RFC 6749 §5.2 error, recorded.
    fn refuse(&self, status: u16, error: &str, description: &str) -> Reply {
        self.record(IdpEvent::Refused {
            endpoint: self.endpoint.to_owned(),
            grant: self.grant,
            status,
            error: error.to_owned(),
            description: description.to_owned(),
        });
        Reply::error(status, error, description)
    }

    /// The POST body as a form; a wrong content type or a malformed body is
    /// a violation and `invalid_request`.
    fn form(&self, call: &Call) -> Result<Form, Reply> {
        if !call.is_form() {
            let what = format!(
                "{} body with content type {:?}, not application/x-www-form-urlencoded",
                self.endpoint, call.content_type
            );
            self.violation(&what);
            return Err(self.refuse(400, "invalid_request", &what));
        }
        let text = String::from_utf8_lossy(&call.body);
        parse_form(&text).map_err(|why| {
            self.violation(format!("{} body: {why}", self.endpoint));
            self.refuse(400, "invalid_request", &why)
        })
    }

    /// RFC 6749 §2.3: which registered client this is, checked: HTTP Basic
    /// or form fields (never both secrets), a confidential client's
    /// secret, no secret from a public client.
    fn authenticate(&self, state: &State, call: &Call, form: &Form) -> Result<Caller, Reply> {
        let basic = call.basic();
        let with_basic = basic.is_some();
        let invalid_client = |description: &str| {
            let mut reply = self.refuse(401, "invalid_client", description);
            reply.www_authenticate = with_basic;
            reply
        };
        let form_id = form.get("client_id");
        let form_secret = form.get("client_secret");
        let (client_id, secret, how) = match basic {
            Some(None) => return Err(invalid_client("malformed Basic credentials")),
            Some(Some((id, secret))) => {
                if form_secret.is_some() {
                    let what = "client_secret both in Basic and in the body";
                    self.violation(what);
                    return Err(self.refuse(400, "invalid_request", what));
                }
                if form_id.is_some_and(|f| *f != id) {
                    return Err(invalid_client("client_id in the body differs from Basic"));
                }
                (id, Some(secret), ClientAuth::BasicHeader)
            }
            None => match form_id {
                Some(id) => (id.clone(), form_secret.cloned(), ClientAuth::FormBody),
                None => return Err(invalid_client("no client_id")),
            },
        };
        let Some(client) = state.script.find_client(&client_id) else {
            return Err(invalid_client("unknown client_id"));
        };
        match (&client.client_secret, secret.as_deref()) {
            (Some(want), Some(got)) if want == got => {}
            (Some(_), Some(_)) => return Err(invalid_client("wrong client_secret")),
            (Some(_), None) => return Err(invalid_client("confidential client without a secret")),
            // Basic with an empty password is how some libraries name a
            // public client.
            (None, None | Some("")) => {}
            (None, Some(_)) => return Err(invalid_client("public client sent a client_secret")),
        }
        Ok(Caller {
            client: client.clone(),
            how,
        })
    }
}

/// Dispatch on path and method.
pub(super) fn route(shared: &Shared, id: usize, call: &Call) -> Reply {
    let post = call.method == hyper::Method::POST;
    let get = call.method == hyper::Method::GET;
    let ctx = |endpoint| Ctx {
        shared,
        id,
        endpoint,
        grant: None,
    };
    match call.path.as_str() {
        DEVICE_AUTHORIZATION_PATH if post => {
            device_authorization(&ctx(DEVICE_AUTHORIZATION_PATH), call)
        }
        TOKEN_PATH if post => token(ctx(TOKEN_PATH), call),
        INTROSPECTION_PATH if post || get => introspect(&ctx(INTROSPECTION_PATH), call),
        VERIFICATION_PATH if get => Reply::text(
            200,
            "fake IdP: a user would sign in here and enter the code; tests script the outcome\n",
        ),
        DEVICE_AUTHORIZATION_PATH | TOKEN_PATH => not_allowed("POST"),
        INTROSPECTION_PATH => not_allowed("GET, POST"),
        VERIFICATION_PATH => not_allowed("GET"),
        _ => Reply::text(404, "not found\n"),
    }
}

fn not_allowed(allow: &'static str) -> Reply {
    let mut reply = Reply::text(405, "method not allowed\n");
    reply.allow = Some(allow);
    reply
}

fn device_authorization(ctx: &Ctx<'_>, call: &Call) -> Reply {
    let form = match ctx.form(call) {
        Ok(form) => form,
        Err(reply) => return reply,
    };
    let mut state = ctx.shared.lock();
    let client = match ctx.authenticate(&state, call, &form) {
        Ok(caller) => caller.client,
        Err(reply) => return reply,
    };
    state.counts.device_authorizations += 1;
    let scope = form.get("scope").cloned().unwrap_or_default();
    let device_code = random_token("fake-dc.", 48);
    let user_code = random_user_code();
    let script = &state.script;
    let interval = script.interval;
    let lifetime = script.device_code_lifetime;
    let grant = DeviceGrant {
        client_id: client.client_id.clone(),
        scope: scope.clone(),
        expires_at: Instant::now() + lifetime,
        interval: Duration::from_secs(interval),
        pending_left: script.pending_polls,
        last_poll: None,
        redeemed: false,
    };
    let verification_uri = format!("{}{VERIFICATION_PATH}", state.base_url);
    state.devices.insert(device_code.clone(), grant);
    drop(state);
    ctx.record(IdpEvent::DeviceAuthorized {
        client_id: client.client_id,
        scope,
        user_code: user_code.clone(),
    });
    Reply::json(
        200,
        &json!({
            "device_code": device_code,
            "user_code": user_code,
            "verification_uri": verification_uri,
            "verification_uri_complete": format!("{verification_uri}?code={user_code}"),
            "expires_in": lifetime.as_secs(),
            "interval": interval,
            "message": format!(
                "To sign in, use a web browser to open the page {verification_uri} \
                 and enter the code {user_code} to authenticate."
            ),
        }),
    )
}

fn token(mut ctx: Ctx<'_>, call: &Call) -> Reply {
    // Counted before anything can refuse it: every POST /token is a token
    // request.
    let mut state = ctx.shared.lock();
    state.counts.token_requests += 1;
    let parsed = if call.is_form() {
        parse_form(&String::from_utf8_lossy(&call.body)).ok()
    } else {
        None
    };
    let grant_type = parsed.as_ref().and_then(|f| f.get("grant_type").cloned());
    ctx.grant = grant_type.as_deref().and_then(GrantType::from_wire);
    if let Some(grant) = ctx.grant {
        state.counts.per_grant[grant.index()] += 1;
    }
    let (left, status) = state.failing_token_requests;
    if left > 0 {
        state.failing_token_requests.0 = left - 1;
        drop(state);
        ctx.record(IdpEvent::ScriptedFailure {
            status,
            grant: ctx.grant,
        });
        return Reply::text(status, &format!("fake IdP: scripted HTTP {status}\n"));
    }
    drop(state);
    let form = match ctx.form(call) {
        Ok(form) => form,
        Err(reply) => return reply,
    };
    let mut state = ctx.shared.lock();
    let caller = match ctx.authenticate(&state, call, &form) {
        Ok(caller) => caller,
        Err(reply) => return reply,
    };
    match (ctx.grant, grant_type) {
        (Some(GrantType::DeviceCode), _) => device_poll(&ctx, &mut state, &caller, &form),
        (Some(GrantType::RefreshToken), _) => refresh(&ctx, &mut state, &caller, &form),
        (Some(GrantType::ClientCredentials), _) => {
            client_credentials(&ctx, &mut state, &caller, &form)
        }
        (None, None) => ctx.refuse(400, "invalid_request", "grant_type missing"),
        (None, Some(other)) => ctx.refuse(
            400,
            "unsupported_grant_type",
            &format!("grant_type {other:?} is not implemented"),
        ),
    }
}

/// RFC 8628 §3.5: the answer to one poll.
fn device_poll(ctx: &Ctx<'_>, state: &mut State, caller: &Caller, form: &Form) -> Reply {
    let client = &caller.client;
    let Some(code) = form.get("device_code") else {
        return ctx.refuse(400, "invalid_request", "device_code missing");
    };
    let now = Instant::now();
    let State {
        script,
        devices,
        slow_down_next,
        ..
    } = state;
    let Some(grant) = devices.get_mut(code) else {
        return ctx.refuse(400, "invalid_grant", "unknown device_code");
    };
    if grant.client_id != client.client_id {
        return ctx.refuse(400, "invalid_grant", "device_code of another client");
    }
    let since_previous = grant.last_poll.map(|t| now.duration_since(t));
    grant.last_poll = Some(now);
    if let Some(since) = since_previous {
        if script.enforce_interval && since + PACE_SLACK < grant.interval {
            ctx.violation(format!(
                "device code polled {} ms after the previous poll; the interval is {} s",
                since.as_millis(),
                grant.interval.as_secs()
            ));
        }
    }
    let answer: Result<(String, String), &str> = if grant.redeemed {
        Err("invalid_grant")
    } else if now >= grant.expires_at {
        Err("expired_token")
    } else if *slow_down_next {
        *slow_down_next = false;
        grant.interval += script.slow_down_increment;
        Err("slow_down")
    } else if grant.pending_left > 0 {
        grant.pending_left -= 1;
        Err("authorization_pending")
    } else {
        match &script.device_outcome {
            DeviceOutcome::Approve(user) => {
                grant.redeemed = true;
                Ok((user.clone(), grant.scope.clone()))
            }
            DeviceOutcome::Deny => Err("access_denied"),
            DeviceOutcome::Expire => Err("expired_token"),
            DeviceOutcome::Pending => Err("authorization_pending"),
        }
    };
    let poll = |answer: &str| IdpEvent::DevicePoll {
        client_id: client.client_id.clone(),
        answer: answer.to_owned(),
        since_previous,
    };
    match answer {
        Err(error) => {
            ctx.record(poll(error));
            let description = match error {
                "invalid_grant" => "device_code already redeemed",
                "expired_token" => "device_code expired",
                "slow_down" => "polling too fast",
                "access_denied" => "the user declined",
                _ => "the user has not finished signing in",
            };
            Reply::error(400, error, description)
        }
        Ok((user, scope)) => {
            ctx.record(poll("tokens"));
            let offline = !state.script.require_offline_access
                || scope.split(' ').any(|s| s == "offline_access");
            issue(ctx, state, caller, &user, &scope, offline, false)
        }
    }
}

/// RFC 6749 §6.
fn refresh(ctx: &Ctx<'_>, state: &mut State, caller: &Caller, form: &Form) -> Reply {
    let client = &caller.client;
    let Some(presented) = form.get("refresh_token") else {
        return ctx.refuse(400, "invalid_request", "refresh_token missing");
    };
    if state.failing_refreshes > 0 {
        state.failing_refreshes -= 1;
        return ctx.refuse(400, "invalid_grant", "scripted invalid_grant");
    }
    let rotate = state.script.rotate_refresh_tokens;
    let Some(record) = state.refresh_token_mut(presented) else {
        return ctx.refuse(400, "invalid_grant", "unknown refresh token");
    };
    if record.client_id != client.client_id {
        return ctx.refuse(400, "invalid_grant", "refresh token of another client");
    }
    match record.state {
        RefreshTokenState::Live => {}
        RefreshTokenState::Rotated => {
            return ctx.refuse(400, "invalid_grant", "refresh token was rotated away")
        }
        RefreshTokenState::Revoked => {
            return ctx.refuse(400, "invalid_grant", "refresh token was revoked")
        }
    }
    record.uses += 1;
    if rotate {
        record.state = RefreshTokenState::Rotated;
    }
    let user = record.user.clone();
    let scope = form
        .get("scope")
        .cloned()
        .unwrap_or_else(|| record.scope.clone());
    issue(ctx, state, caller, &user, &scope, rotate, rotate)
}

/// RFC 6749 §4.4.
fn client_credentials(ctx: &Ctx<'_>, state: &mut State, caller: &Caller, form: &Form) -> Reply {
    let client = &caller.client;
    if client.client_secret.is_none() {
        return ctx.refuse(
            400,
            "unauthorized_client",
            "client_credentials needs a confidential client",
        );
    }
    let Some(user) = &client.app_user else {
        return ctx.refuse(
            400,
            "unauthorized_client",
            "the client has no app user scripted",
        );
    };
    let scope = form.get("scope").cloned().unwrap_or_default();
    issue(ctx, state, caller, user, &scope, false, false)
}

/// A successful token response (RFC 6749 §5.1), recorded.
fn issue(
    ctx: &Ctx<'_>,
    state: &mut State,
    caller: &Caller,
    user: &str,
    scope: &str,
    with_refresh: bool,
    rotated: bool,
) -> Reply {
    let client = &caller.client;
    let lifetime = state.script.access_token_lifetime;
    let access = state.mint_access(user, Some(&client.client_id), ctx.grant, scope, lifetime);
    let mut body = json!({
        "access_token": access.access_token,
        "token_type": "Bearer",
        "scope": scope,
    });
    if !state.script.omit_expires_in {
        body["expires_in"] = json!(lifetime.as_secs());
    }
    if with_refresh {
        body["refresh_token"] = json!(state.mint_refresh(user, &client.client_id, scope));
    }
    if let Some(grant) = ctx.grant {
        ctx.record(IdpEvent::TokensIssued {
            grant,
            client_id: client.client_id.clone(),
            user: user.to_owned(),
            client_auth: caller.how,
            refresh_token: with_refresh,
            rotated,
        });
    }
    Reply::json(200, &body)
}

/// RFC 7662: POST with a form `token` (Dovecot's `introspection_mode =
/// post`), or GET with `?token=` / `?access_token=` or a Bearer header.
/// Client authentication is optional; if offered it must be right.
fn introspect(ctx: &Ctx<'_>, call: &Call) -> Reply {
    let form = if call.method == hyper::Method::POST {
        match ctx.form(call) {
            Ok(form) => form,
            Err(reply) => return reply,
        }
    } else {
        match parse_form(call.query.as_deref().unwrap_or("")) {
            Ok(form) => form,
            Err(why) => return ctx.refuse(400, "invalid_request", &why),
        }
    };
    let token = form
        .get("token")
        .or_else(|| form.get("access_token"))
        .map(String::as_str)
        .or_else(|| call.bearer());
    let Some(token) = token else {
        return ctx.refuse(400, "invalid_request", "token missing");
    };
    let mut state = ctx.shared.lock();
    let offers_client = call.basic().is_some() || form.contains_key("client_id");
    let how = if offers_client && call.bearer().is_none() {
        match ctx.authenticate(&state, call, &form) {
            Ok(caller) => caller.how,
            Err(reply) => return reply,
        }
    } else {
        ClientAuth::Anonymous
    };
    state.counts.introspections += 1;
    let found = state.access_token(token).filter(|t| t.is_valid()).cloned();
    drop(state);
    ctx.record(IdpEvent::Introspection {
        active: found.is_some(),
        user: found.as_ref().map(|t| t.user.clone()),
        client_auth: how,
    });
    let Some(t) = found else {
        return Reply::json(200, &json!({ "active": false }));
    };
    let unix = |at: SystemTime| at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    Reply::json(
        200,
        &json!({
            "active": true,
            "sub": t.user,
            "username": t.user,
            "email": t.user,
            "scope": t.scope,
            "client_id": t.client_id,
            "token_type": "Bearer",
            "exp": unix(t.expires_at),
            "iat": unix(t.issued_at),
        }),
    )
}
