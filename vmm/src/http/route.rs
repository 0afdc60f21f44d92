//! Helpers for routers: the rules every API on this server follows for
//! methods, bodies and query strings, so that each answers bad input the
//! same way.

use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::message::Request;

/// The 405 for a method the resource does not take.
pub fn method_not_allowed(req: &Request, allowed: &'static str) -> ApiError {
    ApiError::MethodNotAllowed {
        method: req.method.clone(),
        path: req.path().to_string(),
        allowed,
    }
}

/// Refuses a query string (`?...`) on a resource that takes none.
pub fn no_query(req: &Request) -> Result<(), ApiError> {
    match req.query() {
        None => Ok(()),
        Some(_) => Err(ApiError::BadRequest(format!(
            "query strings are not supported: {}",
            req.target
        ))),
    }
}

/// Refuses a body on a request that takes none.
pub fn no_body(req: &Request) -> Result<(), ApiError> {
    if req.body.is_empty() {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "{} {} takes no request body",
            req.method,
            req.path()
        )))
    }
}

/// Deserializes the body as one JSON object of type `T`; the error names
/// the field at fault (`amount_mib: invalid type: ...`). The body must be
/// there, be an object (serde would also take a struct from an array), and
/// come as `application/json` or without a `Content-Type`.
pub fn json_body<T: DeserializeOwned>(req: &Request) -> Result<T, ApiError> {
    json_media_type(req)?;
    match req.body.iter().find(|b| !b.is_ascii_whitespace()) {
        None => {
            return Err(ApiError::BadRequest(format!(
                "{} {} needs a JSON request body",
                req.method,
                req.path()
            )))
        }
        Some(b'{') => {}
        Some(_) => {
            return Err(ApiError::BadRequest(
                "the request body must be a JSON object".into(),
            ))
        }
    }
    let mut de = serde_json::Deserializer::from_slice(&req.body);
    let value = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    de.end().map_err(|e| ApiError::BadRequest(e.to_string()))?;
    Ok(value)
}

/// [`json_body`], where an empty body means `T::default()`.
pub fn optional_json_body<T: DeserializeOwned + Default>(req: &Request) -> Result<T, ApiError> {
    if req.body.iter().all(u8::is_ascii_whitespace) {
        Ok(T::default())
    } else {
        json_body(req)
    }
}

fn json_media_type(req: &Request) -> Result<(), ApiError> {
    if let Some(content_type) = &req.content_type {
        let media_type = content_type.split(';').next().unwrap_or_default().trim();
        if !media_type.eq_ignore_ascii_case("application/json") {
            return Err(ApiError::UnsupportedMediaType(content_type.clone()));
        }
    }
    Ok(())
}

/// The `name=value` pairs of the query string, in order; refuses names not
/// in `known`, repeated names, and `%` escapes (no value here needs one).
/// A name without `=` has the value `""`.
pub fn query_pairs<'r>(
    req: &'r Request,
    known: &[&str],
) -> Result<Vec<(&'r str, &'r str)>, ApiError> {
    let Some(query) = req.query() else {
        return Ok(Vec::new());
    };
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    for item in query.split('&').filter(|i| !i.is_empty()) {
        let (name, value) = item.split_once('=').unwrap_or((item, ""));
        if item.contains('%') || item.contains('+') {
            return Err(ApiError::BadRequest(format!(
                "query parameter {item:?}: escapes are not supported"
            )));
        }
        if !known.contains(&name) {
            return Err(ApiError::BadRequest(format!(
                "unknown query parameter {name:?} on {} (known: {})",
                req.path(),
                known.join(", ")
            )));
        }
        if pairs.iter().any(|(n, _)| *n == name) {
            return Err(ApiError::BadRequest(format!(
                "query parameter {name:?} is given twice"
            )));
        }
        pairs.push((name, value));
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_pairs_are_strict() {
        let req = Request::new("GET", "/events?since=3&follow", b"");
        assert_eq!(
            query_pairs(&req, &["since", "follow"]).unwrap(),
            [("since", "3"), ("follow", "")]
        );
        let err = |target: &str| {
            query_pairs(&Request::new("GET", target, b""), &["since", "follow"])
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err("/events?until=3"),
            "unknown query parameter \"until\" on /events (known: since, follow)"
        );
        assert_eq!(
            err("/events?since=1&since=2"),
            "query parameter \"since\" is given twice"
        );
        assert!(err("/events?since=%31").contains("escapes are not supported"));
        assert!(query_pairs(&Request::new("GET", "/events?", b""), &[])
            .unwrap()
            .is_empty());
    }

    #[test]
    fn optional_body_defaults_and_still_checks() {
        #[derive(serde::Deserialize, Default, Debug, PartialEq)]
        #[serde(deny_unknown_fields)]
        struct T {
            #[serde(default)]
            a: bool,
        }
        assert_eq!(
            optional_json_body::<T>(&Request::new("POST", "/x", b"")),
            Ok(T::default())
        );
        assert_eq!(
            optional_json_body::<T>(&Request::new("POST", "/x", b"{\"a\":true}")),
            Ok(T { a: true })
        );
        assert!(optional_json_body::<T>(&Request::new("POST", "/x", b"{\"b\":1}")).is_err());
    }
}
